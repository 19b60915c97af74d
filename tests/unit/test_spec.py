import pytest
from pydantic import ValidationError

from jobyard.model import JobSpec, Resources
from jobyard.model.job import MAX_ENTRYPOINT_BYTES, parse_memory_mib


def field_of(exc: ValidationError) -> str:
    return ".".join(str(p) for p in exc.errors()[0]["loc"])


def test_shell_string_runs_under_sh() -> None:
    assert JobSpec(entrypoint="echo hi").argv() == ["/bin/sh", "-c", "echo hi"]


def test_argv_list_runs_as_is() -> None:
    assert JobSpec(entrypoint=["python", "-c", "1"]).argv() == ["python", "-c", "1"]


@pytest.mark.parametrize("entrypoint", ["", "   ", [], [""], ["a\x00b"]])
def test_empty_or_nul_entrypoint_is_refused(entrypoint: object) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec(entrypoint=entrypoint)  # type: ignore[arg-type]
    assert field_of(info.value) == "entrypoint"


def test_huge_entrypoint_is_refused() -> None:
    with pytest.raises(ValidationError, match="longer than"):
        JobSpec(entrypoint="x" * (MAX_ENTRYPOINT_BYTES + 1))


@pytest.mark.parametrize("env", [{"A=B": "1"}, {"": "1"}, {"A\x00": "1"}, {"A": "x\x00y"}])
def test_bad_env_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec(entrypoint="true", env=env)
    assert field_of(info.value) == "env"


@pytest.mark.parametrize("key", ["my.var", "a-b", "1X", "caf\u00e9", "A B", "A\n"])
def test_env_keys_the_shell_would_drop_are_refused(key: str) -> None:
    """dash, which starts every job, drops variables whose names are not shell names: the job
    would never see them, so the submission says so instead."""
    with pytest.raises(ValidationError, match="not a shell variable name") as info:
        JobSpec(entrypoint="true", env={key: "1"})
    assert field_of(info.value) == "env"


def test_shell_names_are_accepted() -> None:
    env = {"_": "1", "_X1": "2", "lower_case": "3", "CUDA_VISIBLE_DEVICES": "0"}
    assert JobSpec(entrypoint="true", env=env).env == env


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate({"entrypoint": "true", "entry_point": "x"})
    assert field_of(info.value) == "entry_point"


@pytest.mark.parametrize(
    ("field", "value"),
    [("cpus", -1), ("gpus", -1), ("memory", -5), ("gpus", 1.5), ("memory", "lots")],
)
def test_negative_or_malformed_resources_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        Resources.model_validate({field: value})
    assert field_of(info.value) == field


@pytest.mark.parametrize("replicas", [0, -1, 100000])
def test_replicas_out_of_range_are_refused(replicas: int) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec(entrypoint="true", replicas=replicas)
    assert field_of(info.value) == "replicas"


@pytest.mark.parametrize(
    ("text", "mib"),
    [
        (512, 512),
        ("512", 512),
        ("512M", 512),
        ("4GiB", 4096),
        ("1.5G", 1536),
        ("2048KiB", 2),
        ("1T", 1048576),
        ("1048576B", 1),
    ],
)
def test_memory_accepts_mib_or_sizes_with_units(text: object, mib: int) -> None:
    assert parse_memory_mib(text) == mib


def test_memory_as_bool_is_refused() -> None:
    with pytest.raises(ValueError, match="MiB"):
        parse_memory_mib(True)
