"""Usage errors exit 2, run-time failures exit 1, choices and ranges, and `--help` without torch."""

import os
import subprocess
import sys
import typing

import pytest
import torch

from sam_edit.cli import common
from sam_edit.cli.app import app

HEAVY_MODULES = ("torch", "diffusers", "transformers", "segment_anything")
CLI_MODULES = ("app", "common", "edit", "edit_options", "invert", "rank", "segment", "score", "bench", "models",
               "doctor", "docs")


def edit_args(image, tmp_path, *extra):
    return ("edit", image, "--from", "cat", "--to", "tiger", "-o", tmp_path / "x.png", "--models", "tiny", *extra)


def invert_args(image, tmp_path, *extra):
    return ("invert", image, "-o", tmp_path / "x.safetensors", "--models", "tiny", *extra)


# Each case: the command's arguments after the image, and a part of the message.
EDIT_USAGE_ERRORS = [
    (["--progress", "bogus"], "'bogus' is not one of 'auto', 'always', 'never'"),
    (["--device", "gpu"], "'gpu' is not one of 'auto', 'cuda', 'mps', 'cpu'"),
    (["--dtype", "fp64"], "'fp64' is not one of 'auto', 'fp16', 'bf16', 'fp32'"),
    (["--offload", "off"], "'off' is not one of 'auto', 'none', 'model', 'sequential'"),
    (["--sam-model", "sam-vit-x"], "'sam-vit-x' is not one of 'sam-vit-b', 'sam-vit-l', 'sam-vit-h'"),
    (["--device", "cpu", "--dtype", "fp16"], "fp16 is not supported with `--device cpu`"),
    (["--max-side", "4000"], "'--max-side'"),
    (["--max-side", "56"], "'--max-side'"),
    (["--max-side", "100"], "100 is not a multiple of 8; use 96 or 104"),
    (["--steps", "0"], "`--steps` must be from 1 to 1000"),
    (["--cross-replace", "2"], "`--cross-replace` must be in [0, 1]"),
    (["--prompt", "a dog"], "must contain the `--from` words"),
    (["--select", "top 3"], "expected `best` or `all-above T`"),
    (["--select", "all-above nan"], "threshold must be a finite number"),
    (["--pick", "3,x"], "expected comma-separated integers"),
    (["--method", "p2p", "--dilate", "4"], "applies to everything, not to p2p"),
]


@pytest.mark.parametrize("extra, message", EDIT_USAGE_ERRORS)
def test_edit_usage_error_exits_2(run, chelsea_path, tmp_path, extra, message):
    result = run(*edit_args(chelsea_path, tmp_path, *extra))
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_output_suffix_is_usage_error(run, chelsea_path, tmp_path):
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "-o", tmp_path / "out.jpg")
    assert result.exit_code == 2
    assert "Invalid value for --output" in result.stderr
    assert "must end in .png" in result.stderr


def test_flags_checked_before_image_read(run, tmp_path):
    result = run(*edit_args(tmp_path / "absent.jpg", tmp_path, "--steps", "0"))
    assert result.exit_code == 2
    assert "not found" not in result.stderr
    result = run(*invert_args(tmp_path / "absent.jpg", tmp_path, "--prompt", "a cat"))
    assert result.exit_code == 2
    assert "not found" not in result.stderr


@pytest.mark.parametrize("max_side", ["64", "2048"])
def test_max_side_bounds_accepted(run, chelsea_path, tmp_path, max_side):
    # The run stops at the .jpg output, after --max-side was parsed and checked.
    result = run("edit", chelsea_path, "--from", "cat", "--to", "tiger", "--max-side", max_side, "-o", tmp_path / "x.jpg")
    assert result.exit_code == 2
    assert "must end in .png" in result.stderr
    assert "--max-side" not in result.stderr


@pytest.mark.parametrize("command", ["invert", "bench"])
def test_max_side_upper_bound_everywhere(run, chelsea_path, tmp_path, command):
    if command == "invert":
        args = invert_args(chelsea_path, tmp_path, "--prompt", "cat", "--method", "p2p", "--max-side", "4096")
    else:
        args = ("bench", "--pie-bench", tmp_path, "--methods", "p2p", "--out", tmp_path / "runs", "--max-side", "4096")
    result = run(*args)
    assert result.exit_code == 2
    assert "--max-side" in result.stderr
    assert "4096 is outside 64 to 2048 px" in result.stderr


def test_invert_empty_prompt_names_prompt(run, chelsea_path, tmp_path):
    result = run(*invert_args(chelsea_path, tmp_path, "--prompt", "", "--method", "p2p"))
    assert result.exit_code == 2
    assert "Invalid value for --prompt: must not be empty" in result.stderr
    assert "--from" not in result.stderr


def test_invert_empty_from_is_rejected(run, chelsea_path, tmp_path):
    result = run(*invert_args(chelsea_path, tmp_path, "--prompt", "a cat", "--from", " ", "--method", "residual"))
    assert result.exit_code == 2
    assert "Invalid value for --from: must not be empty" in result.stderr


@pytest.mark.parametrize("method", ["iclight", "iclight-pnp", "residual"])
def test_invert_missing_region_names_flags(run, chelsea_path, tmp_path, method):
    result = run(*invert_args(chelsea_path, tmp_path, "--prompt", "a cat", "--method", method))
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith("Error: missing --rank, --mask or --from")
    assert f"method `{method}` needs the edit region" in line
    assert "Invalid value" not in line
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["models", "path", "bogus"], "unknown model 'bogus'"),
        (["models", "pull", "sd14", "bogus"], "unknown model 'bogus'"),
        (["models", "pull", "all", "sd14"], "`all` already names every model"),
        (["models", "list", "--models", "huge"], "'huge' is not one of 'default', 'tiny', 'random-full'"),
        (["doctor", "--offload", "off"], "'off' is not one of"),
        (["doctor", "--device", "cpu", "--dtype", "fp16"], "fp16 is not supported with `--device cpu`"),
    ],
)
def test_other_commands_usage_errors(run, args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


@pytest.mark.parametrize("command", ["segment", "rank"])
def test_existing_side_output_needs_overwrite(run, chelsea_path, tmp_path, command):
    output = tmp_path / "cat.json"
    side_file = tmp_path / ("cat.composite.png" if command == "segment" else "cat.preview.png")
    side_file.write_bytes(b"keep me")
    args = ["--masks", tmp_path / "absent.masks.json", "--from", "cat"] if command == "rank" else []
    result = run(command, chelsea_path, *args, "-o", output, "--models", "tiny")
    assert result.exit_code == 1
    assert "--overwrite" in result.stderr
    assert side_file.read_bytes() == b"keep me"
    assert not output.exists()


def test_help_shows_choices_and_range(run):
    result = run("edit", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # the help wraps long lines
    for choice_text in ("<auto|cuda|mps|cpu>", "<auto|fp16|bf16|fp32>", "<auto|none|model|sequential>",
                        "<default|tiny|random-full>", "<auto|always|never>", "64 to 2048 in multiples of 8"):
        assert choice_text in text


@pytest.mark.parametrize("dtype", ["auto", "bf16", "fp32"])
@pytest.mark.parametrize("offload", ["auto", "none", "model", "sequential"])
def test_runtime_spellings_accepted(run, dtype, offload):
    result = run("doctor", "--json", "--device", "cpu", "--dtype", dtype, "--offload", offload)
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_runtime_error(run):
    result = run("doctor", "--device", "cuda")
    assert result.exit_code == 1
    assert "PyTorch sees no CUDA device" in result.stderr


def test_choices_match_library():
    from sam_edit import bench
    from sam_edit.cli import bench as bench_cli
    from sam_edit.methods import inversion_based, registry
    from sam_edit.models import loaders
    from sam_edit.models.registry import MODELS
    from sam_edit.runtime import DEVICES, DTYPES, OFFLOADS

    assert typing.get_args(common.DeviceName) == DEVICES
    assert typing.get_args(common.DtypeName) == ("auto", *DTYPES)
    assert typing.get_args(common.OffloadName) == OFFLOADS
    assert typing.get_args(common.ModelSetName) == loaders.MODEL_SETS
    assert typing.get_args(common.SamModelName) == tuple(name for name, spec in MODELS.items() if spec.kind == "sam")
    assert bench_cli.DEFAULT_SEED == bench.DEFAULT_SEED
    for name, method in inversion_based.METHODS.items():
        assert registry.METHODS[name].needs_mask == method.needs_mask


def imported_heavy_modules(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return which of HEAVY_MODULES it imported."""
    script = f"import sys\n{code}\nprint(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    environment = os.environ | {"HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def test_cli_modules_import_no_torch():
    modules = ", ".join(f"sam_edit.cli.{name}" for name in CLI_MODULES)
    assert imported_heavy_modules(f"import {modules}") == []


def test_help_imports_no_torch():
    helps = [[], ["models"], *[[name] for name in ("segment", "rank", "invert", "edit", "score", "bench", "doctor")],
             ["models", "list"], ["models", "pull"], ["models", "path"]]
    code = (
        "import contextlib, io\n"
        "from sam_edit.cli.app import app\n"
        f"for words in {helps!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        app([*words, '--help'], prog_name='samedit')"
    )
    assert imported_heavy_modules(code) == []
