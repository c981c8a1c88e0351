#!/usr/bin/env python
"""Check the cluster definitions offline, with the validators their tools use.

    python cluster/validate.py                      # both shipped files
    python cluster/validate.py --ray-up FILE        # another `ray up` YAML
    python cluster/validate.py --rayjob FILE        # another KubeRay RayJob

- ``ray up`` YAML: Ray's own ``prepare_config`` + ``validate_config`` (Ray's ``ray-schema.json``,
  which rejects unknown keys), then this project's rules: token auth on every ``ray start``, the
  dashboard on 127.0.0.1, the project's Ray stopped by its temp dir (never a blanket ``ray stop``).
- RayJob: the ``openAPIV3Schema`` of KubeRay's RayJob CRD (``schemas/``) with ``jsonschema``, plus
  unknown fields (which the API server would drop or reject; the schema alone lets them pass),
  then this project's rules: token auth from a Kubernetes Secret, no Ingress or external Service,
  the entrypoint running ``launch.py run`` on a shipped job file.

CEL rules (``x-kubernetes-validations``) are not evaluated; only an API server does that.
Each problem is one line ``FILE: where: reason``; the exit status is 1 if there is any.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

HERE = Path(__file__).resolve().parent
RAY_UP = HERE / "ray-up.yaml"
RAYJOB = HERE / "kuberay-rayjob.yaml"
RAYJOB_SCHEMA = HERE / "schemas" / "rayjob-crd-v1.7.0.json"
PROJECT_TEMP_DIR = "/tmp/dist-core-ray"
BLANKET_STOP = re.compile(r"(^|[;&|(]\s*|\s)ray\s+stop\b")


# -- ray up ---------------------------------------------------------------------------------------


def ray_up_schema_errors(cfg: dict) -> list[str]:
    """Ray's own checks; ``prepare_config`` fills defaults exactly as ``ray up`` does."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(cfg)))
    except jsonschema.ValidationError as e:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        return [f"{where}: {e.message}"]
    except ValueError as e:  # Ray's own rules beyond the schema (e.g. node types)
        return [f"(config): {str(e).strip().splitlines()[0]}"]
    return []


def ray_start_commands(cfg: dict) -> Iterator[tuple[str, str]]:
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for i, cmd in enumerate(cfg.get(key) or []):
            yield f"{key}[{i}]", cmd


def ray_up_rule_errors(cfg: dict) -> list[str]:
    errors = []
    starts = 0
    for where, cmd in ray_start_commands(cfg):
        if BLANKET_STOP.search(cmd):
            errors.append(f"{where}: `ray stop` kills every Ray on the machine; stop this cluster by its temp dir "
                          f"(python -m dist_core.localcluster stop --dir {PROJECT_TEMP_DIR})")
        if "ray start" in cmd:
            starts += 1
            if "RAY_AUTH_MODE=token" not in cmd:
                errors.append(f"{where}: every `ray start` needs RAY_AUTH_MODE=token")
            if f"--temp-dir {PROJECT_TEMP_DIR}" not in cmd:
                errors.append(f"{where}: `ray start` needs --temp-dir {PROJECT_TEMP_DIR}, so that it can be stopped alone")
            if "--head" in cmd and "--dashboard-host 127.0.0.1" not in cmd:
                errors.append(f"{where}: the head's dashboard must bind 127.0.0.1 (--dashboard-host 127.0.0.1)")
    if starts < 2:
        errors.append("(start commands): need a `ray start` for the head and one for the workers")
    mounts = cfg.get("file_mounts") or {}
    if "~/.ray/auth_token" not in mounts:
        errors.append("file_mounts: must copy the cluster's token to ~/.ray/auth_token on every node")
    return errors


def check_ray_up(path: Path) -> list[str]:
    cfg = yaml.safe_load(path.read_text())
    errors = ray_up_schema_errors(cfg)
    return [f"{path}: {e}" for e in errors or ray_up_rule_errors(cfg)]


# -- KubeRay RayJob -------------------------------------------------------------------------------


def load_rayjob_schema() -> dict:
    return json.loads(RAYJOB_SCHEMA.read_text())


def unknown_fields(doc: Any, schema: dict, where: str = "") -> Iterator[str]:
    """Fields the CRD's structural schema does not declare (kubectl's strict validation refuses
    them; JSON Schema without ``additionalProperties: false`` accepts them)."""
    if isinstance(doc, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in doc.items():
            here = f"{where}.{k}" if where else k
            if props is not None and k in props:
                yield from unknown_fields(v, props[k], here)
            elif isinstance(extra, dict):
                yield from unknown_fields(v, extra, here)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and extra is not True:
                yield here
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(doc):
            yield from unknown_fields(v, schema["items"], f"{where}[{i}]")


def rayjob_schema_errors(doc: dict, schema: dict) -> list[str]:
    import jsonschema

    errors = []
    # OpenAPI v3.0 schemas follow JSON Schema draft 4 (boolean exclusiveMinimum, nullable aside).
    for e in sorted(jsonschema.Draft4Validator(schema).iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        errors.append(f"{where}: {e.message}")
    errors += [f"{f}: unknown field" for f in unknown_fields(doc, schema)]
    return errors


def _env(container: dict) -> dict[str, dict]:
    return {e.get("name"): e for e in container.get("env") or []}


def rayjob_rule_errors(doc: dict) -> list[str]:
    errors = []
    spec = doc.get("spec") or {}
    rc = spec.get("rayClusterSpec") or {}
    auth = rc.get("authOptions") or {}
    secret = auth.get("secretName")
    if auth.get("mode") != "token" or not secret:
        errors.append("spec.rayClusterSpec.authOptions: needs mode: token and the secretName of the token Secret")
    head = rc.get("headGroupSpec") or {}
    if head.get("enableIngress"):
        errors.append("spec.rayClusterSpec.headGroupSpec.enableIngress: the dashboard must stay cluster-internal")
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        errors.append("spec.rayClusterSpec.headGroupSpec.serviceType: must be ClusterIP (cluster-internal)")
    groups = [("headGroupSpec", head)] + [(f"workerGroupSpecs[{i}]", g) for i, g in enumerate(rc.get("workerGroupSpecs") or [])]
    images = set()
    for where, group in groups:
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        if not containers:
            errors.append(f"spec.rayClusterSpec.{where}: has no container")
            continue
        env = _env(containers[0])  # KubeRay's Ray container is the first one
        if (env.get("RAY_AUTH_MODE") or {}).get("value") != "token":
            errors.append(f"spec.rayClusterSpec.{where}.template.spec.containers[0].env: needs RAY_AUTH_MODE=token")
        ref = ((env.get("RAY_AUTH_TOKEN") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name") != secret or ref.get("key") != "auth_token":
            errors.append(f"spec.rayClusterSpec.{where}.template.spec.containers[0].env: RAY_AUTH_TOKEN must come "
                          f"from the Secret {secret!r}, key auth_token")
        images.add(containers[0].get("image") or "")
    if len(images) != 1 or "" in images:
        errors.append(f"spec.rayClusterSpec: every Ray container needs the same project image, got {sorted(images)}")
    errors += entrypoint_errors(spec.get("entrypoint") or "")
    return errors


def entrypoint_errors(entrypoint: str) -> list[str]:
    """The entrypoint must run ``python launch.py run <shipped job file>``."""
    words = shlex.split(entrypoint.split("&&")[-1])
    if words[:3] != ["python", "launch.py", "run"] or len(words) < 4:
        return [f"spec.entrypoint: must run `python launch.py run jobs/<file>.yaml`, got {entrypoint!r}"]
    job = HERE.parent / words[3]
    if not job.is_file():
        return [f"spec.entrypoint: job file {words[3]} is not in the project"]
    return []


def check_rayjob(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    errors = rayjob_schema_errors(doc, load_rayjob_schema())
    return [f"{path}: {e}" for e in errors or rayjob_rule_errors(doc)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ray-up", type=Path, action="append", help="a `ray up` YAML (default: cluster/ray-up.yaml)")
    ap.add_argument("--rayjob", type=Path, action="append", help="a KubeRay RayJob (default: cluster/kuberay-rayjob.yaml)")
    a = ap.parse_args(argv)
    if not a.ray_up and not a.rayjob:
        a.ray_up, a.rayjob = [RAY_UP], [RAYJOB]
    errors = [e for p in a.ray_up or [] for e in check_ray_up(p)] + [e for p in a.rayjob or [] for e in check_rayjob(p)]
    for e in errors:
        print(e, file=sys.stderr)
    if not errors:
        print("ok:", ", ".join(str(p) for p in (a.ray_up or []) + (a.rayjob or [])))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
