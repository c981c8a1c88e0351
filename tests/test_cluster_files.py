"""The shipped cluster definitions validate offline with their tools' own validators.

``cluster/ray-up.yaml`` goes through Ray's ``prepare_config`` + ``validate_config`` (what ``ray up``
runs first); ``cluster/kuberay-rayjob.yaml`` through the ``openAPIV3Schema`` of KubeRay's RayJob CRD
(v1.7.0, shipped in ``cluster/schemas/``) with ``jsonschema``. A deliberately broken copy of each
fails with the validator's own message. No cluster is started here.
"""

import copy
import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"


def _load_validate():
    spec = importlib.util.spec_from_file_location("cluster_validate", CLUSTER / "validate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


validate = _load_validate()


@pytest.fixture(scope="module")
def ray_up():
    return yaml.safe_load((CLUSTER / "ray-up.yaml").read_text())


@pytest.fixture(scope="module")
def rayjob():
    return yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())


@pytest.fixture(scope="module")
def crd_schema():
    return validate.load_rayjob_schema()


# -- ray up ---------------------------------------------------------------------------------------


def test_ray_up_passes_rays_own_validator(ray_up):
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(ray_up))
    validate_config(cfg)  # raises jsonschema.ValidationError on any mistake
    assert cfg["provider"]["type"] == "local" and cfg["head_node_type"] in cfg["available_node_types"]
    assert validate.ray_up_rule_errors(ray_up) == []


def test_ray_up_misspelt_key_fails_with_rays_message(ray_up):
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(ray_up)
    broken["max_worker"] = broken.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match=r"'max_worker' was unexpected"):
        validate_config(prepare_config(copy.deepcopy(broken)))
    assert validate.ray_up_schema_errors(broken) == [
        "(top level): Additional properties are not allowed ('max_worker' was unexpected)"]


def test_ray_up_token_dashboard_and_scoped_stop(ray_up):
    starts = dict(validate.ray_start_commands(ray_up))
    head = [c for c in starts.values() if "ray start --head" in c]
    assert len(head) == 1 and "--dashboard-host 127.0.0.1" in head[0]
    assert all("RAY_AUTH_MODE=token" in c for c in starts.values() if "ray start" in c)
    assert not any(validate.BLANKET_STOP.search(c) for c in starts.values())
    assert ray_up["file_mounts"]["~/.ray/auth_token"] == "~/.ray/dist_core_token"
    assert any('"torch==2.13.0" -e .' in c for c in ray_up["setup_commands"])

    broken = copy.deepcopy(ray_up)
    broken["head_start_ray_commands"][0] = "ray stop"
    broken["worker_start_ray_commands"][1] = broken["worker_start_ray_commands"][1].replace("RAY_AUTH_MODE=token ", "")
    broken["head_start_ray_commands"][1] = broken["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")
    errors = validate.ray_up_rule_errors(broken)
    assert any(e.startswith("head_start_ray_commands[0]: `ray stop` kills every Ray") for e in errors)
    assert "worker_start_ray_commands[1]: every `ray start` needs RAY_AUTH_MODE=token" in errors
    assert any(e.startswith("head_start_ray_commands[1]: the head's dashboard must bind 127.0.0.1") for e in errors)


def test_blanket_stop_pattern():
    for cmd in ["ray stop", "cd x && ray stop", "ray stop --force", "a; ray  stop"]:
        assert validate.BLANKET_STOP.search(cmd), cmd
    for cmd in ["python -m dist_core.localcluster stop --dir /tmp/dist-core-ray", "ray start --head", "stray stop"]:
        assert not validate.BLANKET_STOP.search(cmd), cmd


# -- KubeRay RayJob -------------------------------------------------------------------------------


def test_shipped_crd_schema_is_kuberays_rayjob_v1():
    readme = (CLUSTER / "schemas" / "README.md").read_text()
    assert "ray-project/kuberay" in readme and "v1.7.0" in readme and "ray.io_rayjobs.yaml" in readme
    schema = json.loads(validate.RAYJOB_SCHEMA.read_text())
    spec = schema["properties"]["spec"]["properties"]
    assert {"entrypoint", "rayClusterSpec", "submissionMode", "shutdownAfterJobFinishes"} <= set(spec)
    assert spec["rayClusterSpec"]["properties"]["authOptions"]["properties"]["mode"]["enum"] == ["disabled", "token"]


def test_rayjob_passes_the_crd_schema(rayjob, crd_schema):
    jsonschema.Draft4Validator(crd_schema).validate(rayjob)
    assert list(validate.unknown_fields(rayjob, crd_schema)) == []
    assert validate.rayjob_rule_errors(rayjob) == []


@pytest.mark.parametrize("path, value, message", [
    (["spec", "rayClusterSpec", "authOptions", "mode"], "tokens", "'tokens' is not one of ['disabled', 'token']"),
    (["spec", "shutdownAfterJobFinishes"], "yes", "'yes' is not of type 'boolean'"),
    (["spec", "rayClusterSpec", "workerGroupSpecs", 0, "replicas"], "two", "'two' is not of type 'integer'"),
])
def test_rayjob_broken_copy_fails_with_the_schemas_message(rayjob, crd_schema, path, value, message):
    broken = copy.deepcopy(rayjob)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.Draft4Validator(crd_schema).validate(broken)
    assert e.value.message == message
    assert validate.rayjob_schema_errors(broken, crd_schema) == [f"{'.'.join(map(str, path))}: {message}"]


def test_rayjob_missing_required_and_unknown_fields(rayjob, crd_schema):
    broken = copy.deepcopy(rayjob)
    del broken["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    broken["spec"]["shutdownAfterJobFinish"] = broken["spec"].pop("shutdownAfterJobFinishes")  # a typo
    assert validate.rayjob_schema_errors(broken, crd_schema) == [
        "spec.rayClusterSpec.headGroupSpec: 'template' is a required property",
        "spec.shutdownAfterJobFinish: unknown field",
    ]


def test_rayjob_token_from_secret_internal_dashboard_and_entrypoint(rayjob):
    rc = rayjob["spec"]["rayClusterSpec"]
    assert rc["authOptions"] == {"mode": "token", "secretName": "dist-core-ray-token"}
    head = rc["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    containers = [head["template"]["spec"]["containers"][0]] + [g["template"]["spec"]["containers"][0]
                                                               for g in rc["workerGroupSpecs"]]
    for c in containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "dist-core-ray-token", "key": "auth_token"}
    assert len({c["image"] for c in containers}) == 1
    assert rayjob["spec"]["entrypoint"].endswith("python launch.py run jobs/quickstart.yaml")
    assert (ROOT / "jobs" / "quickstart.yaml").is_file()

    broken = copy.deepcopy(rayjob)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = []
    broken["spec"]["rayClusterSpec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    broken["spec"]["entrypoint"] = "python launch.py run jobs/nope.yaml"
    errors = validate.rayjob_rule_errors(broken)
    assert "spec.rayClusterSpec.headGroupSpec.serviceType: must be ClusterIP (cluster-internal)" in errors
    assert "spec.rayClusterSpec.workerGroupSpecs[0].template.spec.containers[0].env: needs RAY_AUTH_MODE=token" in errors
    assert "spec.entrypoint: job file jobs/nope.yaml is not in the project" in errors


def test_validate_cli_reports_one_line_per_problem(tmp_path, rayjob, capsys):
    assert validate.main([]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    broken = copy.deepcopy(rayjob)
    broken["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "off"
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert validate.main(["--rayjob", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}: spec.rayClusterSpec.authOptions.mode: 'off' is not one of ['disabled', 'token']"]


# -- local.sh -------------------------------------------------------------------------------------


def test_local_sh_is_private_and_scoped():
    text = (CLUSTER / "local.sh").read_text()
    code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    assert re.search(r"^umask 077\b", code, re.M)
    assert not validate.BLANKET_STOP.search(code)
    assert "dist_core.localcluster stop --dir" in code
