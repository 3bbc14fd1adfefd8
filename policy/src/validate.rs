//! `warden validate`: Istio validation webhook rules (in progress).
