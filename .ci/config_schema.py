#!/usr/bin/env python3
"""Every configuration eddy ships validates against config/eddy.schema.json.

The schema is generated from the configuration types (`eddy schema`; a cargo
test keeps the committed file equal to it). Checked here: config/eddy.toml,
the embedded default, deploy/container.toml, and every eddy.toml inside a
Kubernetes ConfigMap under deploy/kubernetes/. And a file with a misspelt
key must fail, so the check itself can fail.
"""

import glob
import json
import os
import sys
import tomllib

import jsonschema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def configmap_tomls(path):
    """The `eddy.toml: |` blocks of a YAML file, by indentation."""
    blocks, current, indent = [], None, None
    for line in open(path, encoding="utf-8").read().splitlines():
        if current is not None:
            stripped = line.lstrip(" ")
            width = len(line) - len(stripped)
            if stripped and indent is None:
                indent = width
            if stripped and width < (indent or 0):
                blocks.append("\n".join(current))
                current, indent = None, None
            else:
                current.append(line[indent or 0:] if stripped else "")
                continue
        if line.strip().startswith("eddy.toml: |"):
            current, indent = [], None
    if current is not None:
        blocks.append("\n".join(current))
    return blocks


def main():
    schema = json.load(open(os.path.join(ROOT, "config", "eddy.schema.json"), encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    files = [
        ("config/eddy.toml", open(os.path.join(ROOT, "config/eddy.toml"), encoding="utf-8").read()),
        ("src/config/default.toml", open(os.path.join(ROOT, "src/config/default.toml"), encoding="utf-8").read()),
        ("deploy/container.toml", open(os.path.join(ROOT, "deploy/container.toml"), encoding="utf-8").read()),
    ]
    for path in sorted(glob.glob(os.path.join(ROOT, "deploy/kubernetes/*.yaml"))):
        for i, block in enumerate(configmap_tomls(path)):
            files.append((f"{os.path.relpath(path, ROOT)} (eddy.toml #{i + 1})", block))
    failed = 0
    for name, text in files:
        errors = list(validator.iter_errors(tomllib.loads(text)))
        for e in errors:
            print(f"FAIL {name}: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}")
        failed += bool(errors)
        if not errors:
            print(f"ok   {name}")
    bad = tomllib.loads('[pool]\nmax_idle_totl = 10\nidle_timeout = "30 seconds"\n')
    if not list(validator.iter_errors(bad)):
        print("FAIL the schema accepts a misspelt key and a bad duration")
        failed += 1
    else:
        print("ok   a misspelt key and a bad duration are refused")
    configmaps = sum(1 for n, _ in files if n.startswith("deploy/kubernetes"))
    if configmaps == 0:
        print("FAIL no eddy.toml found in the Kubernetes manifests")
        failed += 1
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
