#!/usr/bin/env python3
"""Turns a CustomResourceDefinition's openAPIV3Schema into a strict JSON schema.

    crd2jsonschema.py CRD.yaml VERSION SOURCE > out.json

Kubernetes prunes (and `kubectl apply --validate=strict` rejects) fields a
structural schema does not declare; JSON Schema allows them unless told
otherwise. So every object that lists `properties` and neither sets
`additionalProperties` nor `x-kubernetes-preserve-unknown-fields` gets
`additionalProperties: false`, the way kubeconform's openapi2jsonschema
--strict does. `metadata` is left open (the API server validates it).
"""
import json
import sys

import yaml


def strict(node, path=()):
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields") and path != ("properties", "metadata")):
            node["additionalProperties"] = False
        for key, value in node.items():
            strict(value, path + (key,))
    elif isinstance(node, list):
        for item in node:
            strict(item, path)
    return node


def main() -> int:
    crd_path, version, source = sys.argv[1:4]
    crd = yaml.safe_load(open(crd_path))
    names = crd["spec"]["names"]
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["$comment"] = (f"openAPIV3Schema of {crd['spec']['group']}/{version} {names['kind']} from {source}, "
                          "made strict by deploy/validate/schemas/crd2jsonschema.py")
    json.dump(schema, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
