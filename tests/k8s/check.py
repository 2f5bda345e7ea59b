"""Validates deploy/ with real schemas (run by tests/k8s_schemas.rs; tools
from `scripts/setup.sh k8s`):

- every Kubernetes object, with kubernetes-validate in strict mode (unknown
  fields refused) against the Kubernetes 1.30 and 1.37 OpenAPI schemas;
- every CanaryRollout, and a set of bad ones, against the CRD's own
  openAPIV3Schema (jsonschema; strict = unknown fields refused, as
  `kubectl apply --validate=strict`), its `x-kubernetes-validations` CEL rules
  evaluated with cel-python (plus the Kubernetes list library's isSorted);
- every WasmPlugin, and the files given with --wasmplugin (the sink's patch
  result), against Istio's WasmPlugin schema (@kubernetes-models/istio, from
  npm), by wasmplugin.mjs.

Usage: check.py REPO_ROOT [--wasmplugin FILE.json ...]
Prints one line per check and `N passed, M failed`; exits 1 on a failure.
"""

import copy
import json
import os
import subprocess
import sys

import celpy
import jsonschema
import kubernetes_validate
import yaml
from celpy import celtypes

KUBERNETES_VERSIONS = ["1.30", "1.37"]
HERE = os.path.dirname(os.path.abspath(__file__))

# (what, edit of the example's spec, text the refusal must contain, refused without strict too)
BAD_ROLLOUTS = [
    ("interval without a unit", lambda s: s.update(interval="60"), "does not match", True),
    ("retry_attempts over u32", lambda s: s.setdefault("alerts", {}).update(retry_attempts=5000000000), "maximum", True),
    ("filter.key with a typo", lambda s: s["filter"].update(key=[{"headr": "x-user-id"}]), "headr", True),
    ("spec.intervall (a typo)", lambda s: s.update(intervall="30s"), "intervall", False),
    ("challenger = champion", lambda s: s.update(challenger=s["champion"]), "challenger must differ", True),
    ("stage weights falling", lambda s: s["stages"][1].update(weight_percent=0.5), "must rise", True),
    ("stage weight over 100", lambda s: s["stages"][-1].update(weight_percent=150), "maximum", True),
    ("last stage below 100", lambda s: s["stages"][-1].update(weight_percent=99), "last stage must be 100", True),
    ("negative min_requests", lambda s: s["stages"][0].update(min_requests=-1), "minimum", True),
    ("prediction without bins", lambda s: s["filter"].update(prediction={"from": {"header": "x-p"}}), "bins", True),
    ("short override secret", lambda s: s["filter"].update(override={"header": "x-qa", "secret": "short"}), "short", True),
]


def docs_under(root):
    for base, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            if f.endswith((".yaml", ".yml")):
                path = os.path.join(base, f)
                with open(path) as fh:
                    for doc in yaml.safe_load_all(fh):
                        if doc:
                            yield os.path.relpath(path, os.path.dirname(root)), doc


def to_jsonschema(node, strict):
    """openAPIV3Schema (structural) → JSON Schema: `nullable` becomes a
    null type; strict refuses unknown fields where the API server would
    prune them (not under x-kubernetes-preserve-unknown-fields)."""
    if isinstance(node, list):
        return [to_jsonschema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k.startswith("x-kubernetes-") or k == "nullable":
            continue
        if k == "properties":
            out[k] = {name: to_jsonschema(s, strict) for name, s in v.items()}
        elif k in ("items", "additionalProperties", "oneOf", "anyOf", "allOf", "not"):
            out[k] = to_jsonschema(v, strict)
        else:
            out[k] = v
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if strict and "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def is_sorted(values):
    """Kubernetes' CEL list library: `list.isSorted()`."""
    return celtypes.BoolType(all(values[i] <= values[i + 1] for i in range(len(values) - 1)))


def typed(value, node):
    """The value as the API server hands it to CEL: `type: number` is a double."""
    if node.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: typed(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v, node.get("items", {})) for v in value]
    return value


def cel_failures(node, value, path):
    env = celpy.Environment()
    failures = []
    for rule in node.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]), functions={"isSorted": is_sorted})
        try:
            ok = bool(program.evaluate({"self": celpy.json_to_cel(typed(value, node))}))
        except celpy.CELEvalError as e:
            ok, rule = False, {**rule, "message": f"{rule.get('message')} (evaluation error: {e})"}
        if not ok:
            failures.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for k, s in node.get("properties", {}).items():
            if k in value:
                failures += cel_failures(s, value[k], f"{path}.{k}")
    elif isinstance(value, list) and "items" in node:
        for i, v in enumerate(value):
            failures += cel_failures(node["items"], v, f"{path}[{i}]")
    return failures


def prune(value, node):
    """What the API server keeps without strict validation: unknown fields
    dropped (then the schema is checked)."""
    if isinstance(value, dict) and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        return {k: prune(v, node["properties"][k]) for k, v in value.items() if k in node["properties"]}
    if isinstance(value, list) and "items" in node:
        return [prune(v, node["items"]) for v in value]
    return value


def refusals(schema, obj, strict):
    """Why the API server would refuse `obj` (empty: accepted)."""
    # The type and metadata are the API server's, implied in every CRD schema.
    schema = copy.deepcopy(schema)
    schema["properties"].update(apiVersion={"type": "string"}, kind={"type": "string"}, metadata={"type": "object"})
    if not strict:
        obj = prune(obj, schema)
    validator = jsonschema.Draft202012Validator(to_jsonschema(schema, strict))
    out = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    if not out:
        out = cel_failures(schema, obj, "<root>")
    return out


def main():
    root = sys.argv[1]
    extra_plugins = [a for i, a in enumerate(sys.argv) if i > 1 and sys.argv[i - 1] == "--wasmplugin"]
    passed, failed = 0, []

    def check(ok, line):
        nonlocal passed
        print(("ok    " if ok else "FAIL  ") + line)
        if ok:
            passed += 1
        else:
            failed.append(line)

    docs = list(docs_under(os.path.join(root, "deploy")))
    crd = next(d for _, d in docs if d.get("kind") == "CustomResourceDefinition")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rollouts, plugins = [], []
    for path, doc in docs:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name", "")
        what = f"{path}: {kind} {name}"
        if kind == "Kustomization" or "apiVersion" not in doc:
            continue  # kustomize's own file, an Envoy configuration: not API objects
        if kind == "CanaryRollout":
            rollouts.append(doc)
            why = refusals(schema, doc, strict=True)
            check(not why, f"{what} against the CRD's schema and CEL rules, strict {why or ''}")
        elif kind == "WasmPlugin":
            plugins.append((what, doc))
        else:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                    check(True, f"{what} against Kubernetes {version}, strict")
                except Exception as e:  # ValidationError, SchemaNotFoundError
                    check(False, f"{what} against Kubernetes {version}, strict: {e}")

    for path, doc in docs_under(os.path.join(root, "tests", "fixtures", "k8s")):
        why = refusals(schema, doc, strict=True)
        check(not why, f"{path}: CanaryRollout against the CRD's schema and CEL rules, strict {why or ''}")

    example = rollouts[0]
    for what, edit, expected, without_strict in BAD_ROLLOUTS:
        bad = copy.deepcopy(example)
        edit(bad["spec"])
        why = refusals(schema, bad, strict=True)
        check(any(expected in w for w in why), f"bad CanaryRollout refused ({what}): {why}")
        lax = refusals(schema, bad, strict=False)
        if without_strict:
            check(bool(lax), f"  also without strict validation ({what})")
        else:
            check(not lax, f"  pruned, not refused, without strict validation ({what}): the controller's parse refuses it")

    for path in extra_plugins:
        with open(path) as fh:
            plugins.append((path, json.load(fh)))
    # The validator is alive: it refuses a phase Istio does not know.
    bad_plugin = copy.deepcopy(plugins[0][1])
    bad_plugin["spec"]["phase"] = "BEFORE_EVERYTHING"
    plugins.append(("bad WasmPlugin (phase BEFORE_EVERYTHING)", bad_plugin))
    node_modules = os.environ.get("CANARY_K8S_NODE_MODULES",
                                  os.path.join(root, ".tools", "k8s", "node", "node_modules"))
    with_node = subprocess.run(
        ["node", os.path.join(HERE, "wasmplugin.mjs"), node_modules],
        input=json.dumps([{"what": w, "doc": d} for w, d in plugins]),
        capture_output=True, text=True, timeout=60,
    )
    results = json.loads(with_node.stdout or "[]") if with_node.returncode == 0 else []
    check(len(results) == len(plugins), f"Istio WasmPlugin schema ran on {len(plugins)} objects {with_node.stderr[-500:]}")
    for r in results:
        if r["what"].startswith("bad "):
            check(not r["ok"], f"{r['what']} refused by Istio's WasmPlugin schema: {r.get('error', '')}")
        else:
            check(r["ok"], f"{r['what']} against Istio's WasmPlugin schema {r.get('error', '')}")

    print(f"{passed} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
