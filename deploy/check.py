#!/usr/bin/env python3
"""Checks deploy/helm/warden and deploy/kubernetes/ against each other and the binaries.

    python deploy/check.py           # check; exit 1 naming every problem
    python deploy/check.py --write   # regenerate deploy/kubernetes/ from the chart

1. The chart renders with Helm's own engine (helm-python-sdk, Helm v4 as a library; no
   helm binary), its values pass values.schema.json, and `helm lint --strict` finds
   nothing worse than info.
2. deploy/kubernetes/<dir>/<file>.yaml is byte for byte the render of
   templates/<dir>/<file>.yaml with the default values, release "warden", namespace
   istio-system (what `helm template warden deploy/helm/warden -n istio-system` gives).
3. Every manifest, of the default render and of the other value sets below, is valid
   for Kubernetes 1.33 (kubernetes-validate, strict: unknown fields are errors).
4. Every key of the CA's and the agent's config files (ConfigMaps warden-ca-config and
   warden-agent) is a flag of `warden-ca run` / `warden-agent run`: from the built
   binaries' --help when target/debug has them, else from the clap fields of
   ca/src/config.rs and node-agent/src/config.rs.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "warden"
OUT = ROOT / "deploy" / "kubernetes"
RELEASE, NAMESPACE = "warden", "istio-system"
KUBE_VERSION = "1.33.0"
HEADER = (
    "# Generated from deploy/helm/warden (release warden, namespace istio-system, default\n"
    "# values) by `python deploy/check.py --write`; edit the chart, not this file.\n"
)

# Other value sets that must render and validate too (not committed).
VARIANTS: dict[str, dict] = {
    "sqlite, one replica": {"ca": {"replicas": 1}, "database": {"urlSecret": {"name": ""}}},
    "plugged-in cacerts, hard anti-affinity": {
        "ca": {"pluginCerts": {"enabled": True}, "podAntiAffinity": "hard"}
    },
    "webhook off, istiod alias": {"webhook": {"enabled": False}, "istiodAlias": {"enabled": True}},
    "agent in token-file node mode": {"agent": {"kubernetesMode": False}},
}
# Value sets the chart must refuse, with a word of the expected message.
MUST_FAIL: dict[str, tuple[dict, str]] = {
    "SQLite with two replicas": ({"database": {"urlSecret": {"name": ""}}}, "PostgreSQL"),
    "unknown value": ({"ca": {"replica": 3}}, "replica"),
}

# ConfigMap name -> (config file key, binary, Rust source of its flags).
CONFIGS = {
    "warden-ca-config": ("ca.yaml", "warden-ca", ROOT / "ca" / "src" / "config.rs"),
    "warden-agent": ("agent.yaml", "warden-agent", ROOT / "node-agent" / "src" / "config.rs"),
}

errors: list[str] = []


def error(where: str, message: str) -> None:
    errors.append(f"{where}: {message}")


def render(values: dict | None) -> dict[str, str]:
    """Template path relative to templates/ -> rendered text, empty renders left out."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    prefix = f"{chart_name()}/templates/"
    out = {}
    for path, text in rendered.items():
        if not path.endswith(".yaml") or not text.strip():
            continue
        assert path.startswith(prefix), path
        out[path[len(prefix):]] = HEADER + text.strip() + "\n"
    return out


def chart_name() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["name"]


def lint() -> None:
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION)
    for e in report.get("errors") or []:
        error("helm lint", e)
    for m in report.get("messages") or []:
        if m["severity"] >= 2:
            error(f"helm lint {m['path']}", m["error"])


def compare(files: dict[str, str], write: bool) -> None:
    existing = {p.relative_to(OUT).as_posix() for p in OUT.rglob("*.yaml")}
    for rel, text in sorted(files.items()):
        path = OUT / rel
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
        elif not path.exists():
            error(f"deploy/kubernetes/{rel}", "missing: run `python deploy/check.py --write`")
        elif path.read_text() != text:
            old, new = path.read_text().splitlines(), text.splitlines()
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            error(
                f"deploy/kubernetes/{rel}:{line + 1}",
                "differs from the chart's render (edit deploy/helm/warden, then "
                "`python deploy/check.py --write`)",
            )
    for rel in sorted(existing - files.keys()):
        if write:
            (OUT / rel).unlink()
            print(f"removed {(OUT / rel).relative_to(ROOT)}")
        else:
            error(f"deploy/kubernetes/{rel}", "not rendered by the chart: remove it (`--write` does)")
    if write:
        for d in sorted(OUT.rglob("*"), reverse=True):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def documents(rel: str, text: str) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        error(rel, f"not YAML: {e}")
        return []


def validate(label: str, files: dict[str, str]) -> int:
    count = 0
    for rel, text in sorted(files.items()):
        for doc in documents(f"{label} {rel}", text):
            count += 1
            name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                field = ".".join(str(p) for p in e.path) or "(top)"
                error(f"{label} {rel} {name}", f"{field}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                error(f"{label} {rel} {name}", e.message)
    return count


def kebab(field: str) -> str:
    return field.replace("_", "-")


def flags_from_source(source: Path) -> set[str]:
    """The file keys of a `warden_common::run_args!` struct: every `#[arg(long...)]`
    field that serde does not skip, in kebab-case (or its `long = "..."` name)."""
    text = source.read_text()
    start = text.index("run_args!")
    flags, attrs = set(), []
    for line in text[start:].splitlines():
        s = line.strip()
        if s.startswith("#["):
            attrs.append(s)
            continue
        m = re.match(r"pub\s+([a-z_][a-z0-9_]*)\s*:", s)
        if m:
            arg = next((a for a in attrs if a.startswith("#[arg(") and "long" in a), None)
            skipped = any(a.startswith("#[serde(") and "skip" in a for a in attrs)
            if arg and not skipped:
                named = re.search(r'long\s*=\s*"([^"]+)"', arg)
                flags.add(named.group(1) if named else kebab(m.group(1)))
            attrs = []
        elif s == "}":
            break
        elif not s.startswith("///") and s:
            attrs = []
    return flags


def flags_from_help(binary: Path) -> set[str]:
    out = subprocess.run(
        [str(binary), "run", "--help"], capture_output=True, text=True, timeout=20, check=True
    ).stdout
    flags = set(re.findall(r"^\s*(?:-\w, )?--([a-z0-9][a-z0-9-]*)", out, re.M))
    return flags - {"help", "version", "config"}


def check_config_keys(files: dict[str, str]) -> list[str]:
    notes = []
    configmaps = {}
    for rel, text in files.items():
        for doc in documents(rel, text):
            if doc.get("kind") == "ConfigMap":
                configmaps[doc["metadata"]["name"]] = (rel, doc)
    for cm_name, (key, binary, source) in CONFIGS.items():
        if cm_name not in configmaps:
            error("chart", f"renders no ConfigMap {cm_name}")
            continue
        rel, doc = configmaps[cm_name]
        built = ROOT / "target" / "debug" / binary
        if built.exists() and os.access(built, os.X_OK):
            flags, how = flags_from_help(built), f"`{built.relative_to(ROOT)} run --help`"
        else:
            flags, how = flags_from_source(source), str(source.relative_to(ROOT))
        if not flags:
            error(how, f"found no flags of {binary}")
            continue
        try:
            config = yaml.safe_load(doc["data"][key]) or {}
        except (KeyError, yaml.YAMLError) as e:
            error(f"deploy/kubernetes/{rel} data.{key}", f"unreadable: {e}")
            continue
        for k in config:
            if k not in flags:
                error(
                    f"deploy/kubernetes/{rel} data.{key}",
                    f"key {k!r} is not a flag of `{binary} run` (flags from {how})",
                )
        notes.append(f"{cm_name}/{key}: {len(config)} keys, all flags of {binary} (from {how})")
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="regenerate deploy/kubernetes/")
    args = parser.parse_args()

    lint()
    try:
        default = render(None)
    except helm.HelmError as e:
        print(f"deploy/helm/warden: does not render: {e}", file=sys.stderr)
        return 1
    compare(default, args.write)
    count = validate("default", default)
    for label, values in VARIANTS.items():
        try:
            count += validate(label, render(values))
        except helm.HelmError as e:
            error(f"values {label!r}", f"do not render: {e}")
    for label, (values, word) in MUST_FAIL.items():
        try:
            render(values)
            error(f"values {label!r}", "rendered, but the chart must refuse them")
        except helm.HelmError as e:
            if word not in str(e):
                error(f"values {label!r}", f"refused without naming {word!r}: {e}")
    notes = check_config_keys(default)

    if errors:
        for e in errors:
            print(f"ERROR {e}", file=sys.stderr)
        print(f"deploy/check.py: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"deploy/check.py: chart renders with Helm {helm.helm_sdk_version()}; "
        f"{len(default)} files in deploy/kubernetes/ match it; {count} manifests "
        f"({1 + len(VARIANTS)} value sets) valid for Kubernetes {KUBE_VERSION} (strict); "
        f"{len(MUST_FAIL)} bad value sets refused"
    )
    for n in notes:
        print(f"deploy/check.py: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
