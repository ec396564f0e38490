"""Docker Compose, run as its own program: ``docker-compose`` (1.29, Debian's package) or, where
that is missing, the ``docker compose`` plugin.

Every command names the project the way the containers' labels recorded it when compose created
them (``-p``, ``--project-directory`` and each ``-f``), so it runs from any folder and on the files
the project was brought up from. Output is captured whole (both streams drained, capped), each
command has a timeout, and every failure is one :class:`ComposeError` line ending with compose's
own last line of error output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess

from deltaimg.errors import ComposeError, printable

PROJECT = "com.docker.compose.project"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
SERVICE = "com.docker.compose.service"
CONFIG_HASH = "com.docker.compose.config-hash"
VERSION = "com.docker.compose.version"
ONE_OFF = "com.docker.compose.oneoff"

QUERY_TIMEOUT = 60.0  # seconds for config and version: they only read files and ask the engine
MAX_OUTPUT = 4 << 20  # characters of a command's output read at most: a project's config is far less
MAX_FILES = 64  # compose files one project names in its label


@dataclasses.dataclass(frozen=True)
class Project:
    """A compose project as its containers' labels name it."""

    name: str
    working_dir: str
    config_files: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> Project | None:
        """The project of a container compose created, or None for another container."""
        name = labels.get(PROJECT)
        if not name or SERVICE not in labels:
            return None
        workdir = labels.get(WORKING_DIR) or ""
        files = tuple(os.path.join(workdir, f)  # compose 1.29 records a file it found itself relative to the folder
                      for f in (labels.get(CONFIG_FILES) or "").split(",") if f)[:MAX_FILES]
        return cls(name, workdir, files)

    def shown(self) -> str:
        """How messages name the project's compose files."""
        return printable(", ".join(self.config_files) or os.path.join(self.working_dir, "docker-compose.yml"))


def find_program() -> list[str] | None:
    """The compose program's command line: ``docker-compose`` if on the PATH, else ``docker compose``
    where the plugin answers; None when neither is installed."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        try:
            answer = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                                    timeout=QUERY_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if answer.returncode == 0:
            return ["docker", "compose"]
    return None


class Compose:
    """One compose program; each method runs one command on one project."""

    def __init__(self, program: list[str]) -> None:
        self.program = program

    @property
    def plugin(self) -> bool:
        """The Go plugin (Compose v2), whose config prints JSON and whose hash leaves the image ID out."""
        return self.program[:2] == ["docker", "compose"]

    def images(self, project: Project) -> dict[str, str]:
        """service -> the image its (resolved) compose file names, for every service that names one."""
        if self.plugin:
            config = json.loads(self._run(project, ["config", "--format", "json"]))
            return {name: str(service["image"]) for name, service in (config.get("services") or {}).items()
                    if isinstance(service, dict) and service.get("image")}
        return service_images(self._run(project, ["config"]))

    def hashes(self, project: Project) -> dict[str, str]:
        """service -> the config hash compose would give a container of it created now, for every
        service, in compose's dependency order (dependencies first)."""
        found = {}
        for line in self._run(project, ["config", "--hash=*"]).splitlines():
            service, _, digest = line.strip().partition(" ")
            if digest:
                found[service] = digest
        return found

    def recreate(self, project: Project, services: list[str], start: bool, timeout: float) -> None:
        """``up --no-deps --force-recreate`` those services: compose replaces their containers, started
        (``-d``) or only created (``--no-start``)."""
        self._run(project, ["up", "-d" if start else "--no-start", "--no-deps", "--force-recreate", "--no-build",
                            *services], timeout)

    def _run(self, project: Project, arguments: list[str], timeout: float = QUERY_TIMEOUT) -> str:
        command = [*self.program, "-p", project.name, "--project-directory", project.working_dir]
        for path in project.config_files:
            command += ["-f", path]
        command += arguments
        shown = printable(" ".join(command))
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  errors="replace", cwd=project.working_dir if os.path.isdir(project.working_dir) else None)
        except subprocess.TimeoutExpired:
            raise ComposeError(f"{shown} did not finish within {timeout:g} s; see docker-compose ps in "
                               f"{printable(project.working_dir)}") from None
        except OSError as exc:
            raise ComposeError(f"cannot run {shown}: {exc.strerror}") from None
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr[-MAX_OUTPUT:].splitlines() if line.strip()]
            raise ComposeError(f"{shown} failed (exit {done.returncode}): {printable(lines[-1] if lines else 'no output')}")
        return done.stdout[:MAX_OUTPUT]


def service_images(config: str) -> dict[str, str]:
    """service -> image from ``docker-compose config`` (1.29): its YAML, as PyYAML's ``safe_dump``
    writes it (block style, two spaces a level); only ``services.<name>.image`` is read."""
    images: dict[str, str] = {}
    in_services = False
    service = None
    for line in config.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        text = line.strip()
        if indent == 0:
            in_services, service = text == "services:", None
        elif in_services and indent == 2 and text.endswith(":"):
            service = _scalar(text[:-1])
        elif in_services and indent == 4 and service is not None and text.startswith("image:"):
            images[service] = _scalar(text.removeprefix("image:").strip())
    return images


def _scalar(text: str) -> str:
    """A YAML plain, 'single' or "double" quoted scalar as its string."""
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("''", "'")
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return str(json.loads(text))
    return text
