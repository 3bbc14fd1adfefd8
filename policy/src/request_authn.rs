//! RequestAuthentication: JWT validation (in progress).
