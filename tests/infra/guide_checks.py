"""The operator guide's commands (docs/operator-guide.md), each checked the way it can be here.

A command lives in a fenced block whose info string is ``bash check=NAME``; CHECKS[NAME] returns
the block's problems, each naming its guide line. The static checks (study, k8s, compose) split a
block into simple commands (``commands``) and hand each to the handler of its program; the checks
that run a block for real (compose-backup, compose-restore) are in guide_runs.py.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tests.infra.guide_runs import local_compose
from tests.infra.infra_files import COMPOSE_DIR, COMPOSE_FILE, DOCKERFILE, ENV_EXAMPLE, ROOT, load_compose, run_compose

GUIDE = ROOT / "docs" / "operator-guide.md"
FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
COMMAND_LANGUAGES = {"bash", "sh", "shell", ""}  # need check=; text, console, yaml ... are not commands
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";", "|", "&"}


class GuideError(Exception):
    """A command the guide should not say."""


@dataclass
class Block:
    """A fenced block: its number in the guide, language, check= name, first line, text."""
    number: int
    language: str
    check: str | None
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"block-{self.number:02d}-{self.check or self.language or 'plain'}"


@dataclass
class Command:
    """A simple command: guide line, logical line, words (without leading NAME=value; each
    ``$(...)`` one opaque word, a key of ``substitutions``)."""
    line: int
    source: str
    words: list[str]
    substitutions: dict[str, str]

    def fail(self, reason: str) -> GuideError:
        return GuideError(f"line {self.line}: `{self.source.strip()}`: {reason}")


@dataclass
class Shell:
    """What a static check follows: the current folder, the objects created so far."""
    cwd: Path
    created: set[str] = field(default_factory=set)


def guide_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text."""
    blocks = []
    for match in FENCE.finditer(text):
        words, indent = match["info"].split(), match["indent"]
        check = next((w.removeprefix("check=") for w in words[1:] if w.startswith("check=")), None)
        body = "\n".join(line.removeprefix(indent) for line in match["body"].splitlines())
        blocks.append(Block(len(blocks) + 1, (words or [""])[0], check, text.count("\n", 0, match.start("body")) + 1,
                            body))
    return blocks


def unchecked(blocks: list[Block]) -> list[str]:
    """Why each block of commands escapes checking: no check=, or one CHECKS does not know."""
    known = ", ".join(CHECKS)
    return [f"{b.id} (guide line {b.line - 1}): " + (f"unknown check={b.check} (known: {known})" if b.check
                                                     else f"```{b.language} without check=NAME ({known})")
            for b in blocks if (b.check or b.language in COMMAND_LANGUAGES) and b.check not in CHECKS]


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(guide line, text) of each line of a block, backslash continuations joined."""
    result, pending, start = [], "", None
    for offset, raw in enumerate(block.text.splitlines()):
        start = block.line + offset if start is None else start
        if (len(raw) - len(raw.rstrip("\\"))) % 2:
            pending += raw[:-1]
            continue
        if (pending + raw).strip():
            result.append((start, pending + raw))
        pending, start = "", None
    return result


def hide_substitutions(line: str) -> tuple[str, dict[str, str]]:
    """``line`` with each ``$(...)`` outside single quotes replaced by a key of the returned dict."""
    out, found, i, quote = [], {}, 0, None
    while i < len(line):
        if quote != "'" and line.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth, j = depth + {"(": 1, ")": -1}.get(line[j], 0), j + 1
            key = f"__SUBST{len(found)}__"
            found[key], i = line[i + 2:j - 1], j
            out.append(key)
            continue
        if line[i] in "'\"" and quote in (None, line[i]):
            quote = None if quote else line[i]
        step = 2 if line[i] == "\\" and quote != "'" else 1
        out.append(line[i:i + step])
        i += step
    return "".join(out), found


def commands(block: Block) -> list[Command]:
    """The simple commands of a block: comments dropped, split on && || ; | & (shlex),
    redirections (``> file``, ``2>&1``) left out."""
    result = []
    for line, source in logical_lines(block):
        hidden, found = hide_substitutions(source)
        lexer = shlex.shlex(hidden, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        try:
            tokens = [*lexer, ";"]
        except ValueError as error:  # an unclosed quote
            raise GuideError(f"line {line}: `{source.strip()}`: {error}") from None
        words, redirect = [], False
        for token in tokens:
            if token in SEPARATORS:
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)
                result += [Command(line, source, words, found)] if words else []
                words = []
            elif set(token) <= set("<>&|") and set(token) & set("<>"):
                redirect = True
                if words and words[-1].isdigit():  # the 2 of 2>
                    words.pop()
            elif not redirect:
                words.append(token)
            else:
                redirect = False
    return result


def parse_options(words: list[str], takes_value: set[str], until_positional: bool = False):
    """(options as (name, value), positional words, words after ``--``); ``until_positional``:
    stop at the first positional word and return it with the rest as the positional words."""
    options, positional, i = [], [], 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return options, positional, words[i + 1:]
        if word.startswith("-") and len(word) > 1:
            name, eq, value = word.partition("=")
            if not eq and name in takes_value and i + 1 < len(words):
                value, i = words[i + 1], i + 1
            options.append((name, value))
        elif until_positional:
            return options, words[i:], []
        else:
            positional.append(word)
        i += 1
    return options, positional, []


# --- what every static check accepts ---------------------------------------------------------------

SIMPLE = {"export": None, "echo": None, "mkdir": None, "base64": None, "openssl": "rand", "python": "-c",
          "python3": "-c", "sleep": None, "kill": "%1"}  # program: the first argument it needs (None: any)


def simple(command: Command, shell: Shell) -> None:
    """A harmless program of SIMPLE, with its required first argument."""
    first = SIMPLE.get(command.words[0])
    if first and command.words[1:2] != [first]:
        raise command.fail(f"{command.words[0]}: only {command.words[0]} {first} here")


def change_directory(command: Command, shell: Shell) -> None:
    """``cd DIR``, relative to the current folder or to the repository root (where blocks start)."""
    target = (command.words[1:] or ["~"])[0]
    folder = next((p.resolve() for p in (shell.cwd / target, ROOT / target) if p.is_dir()), None)
    if folder is None:
        raise command.fail(f"no folder {target} in the repository")
    shell.cwd = folder


def source_file(command: Command, shell: Shell) -> None:
    """``. FILE`` of the repository, or ``. ./.env`` where .env.example is (the guide makes .env)."""
    name = (command.words[1:] or [""])[0]
    if not ((shell.cwd / name).is_file() or (Path(name).name == ".env" and (shell.cwd / ".env.example").is_file())):
        raise command.fail(f"no file {name} here ({shell.cwd.relative_to(ROOT)})")


def set_options(command: Command, shell: Shell) -> None:
    """``set -a``, ``set +a``, ``set -euo pipefail``: shell options only."""
    if not all(w[0] in "-+" or w == "pipefail" for w in command.words[1:]):
        raise command.fail("set takes shell options only here")


COMMON = {**dict.fromkeys(SIMPLE, simple), "cd": change_directory, ".": source_file, "set": set_options}


# --- study: parsed by the real command line --------------------------------------------------------

def parse_study(args: list[str], command: Command) -> None:
    """Parse ``study ARGS`` with the CLI's own parser (typer's click) down to the subcommand,
    running nothing: an unknown command or option, or a missing argument, fails."""
    import typer
    from typer._click.exceptions import ClickException
    from typer.core import TyperGroup

    import study.cli

    group = typer.main.get_command(study.cli.app)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help
            ctx = group.make_context("study", list(args), resilient_parsing=False)
            while isinstance(ctx.command, TyperGroup):
                rest = [*ctx._protected_args, *ctx.args]
                if not rest:
                    ctx.fail("Missing command.")
                name, sub, rest = ctx.command.resolve_command(ctx, rest)
                ctx = sub.make_context(name, rest, parent=ctx, resilient_parsing=False)
    except ClickException as error:
        raise command.fail(f"study: {error.format_message() or 'missing command'}") from None
    except typer.Exit as error:
        if error.exit_code:
            raise command.fail(f"study: exit {error.exit_code}") from None


def study_command(command: Command, shell: Shell) -> None:
    """``study ...``."""
    parse_study(command.words[1:], command)


def eval_study(command: Command, shell: Shell) -> None:
    """``eval "$(study stack up ...)"``: what it substitutes are study commands."""
    inner = [command.substitutions.get(w) for w in command.words[1:]]
    if len(inner) != 1 or inner[0] is None:
        raise command.fail('eval takes one "$(study ...)" here')
    for sub in commands(Block(0, "bash", None, command.line, inner[0])):
        if sub.words[0] != "study":
            raise command.fail("eval runs study commands only here")
        parse_study(sub.words[1:], command)


# --- compose: validated against infra/compose ------------------------------------------------------

COMPOSE_SUBCOMMANDS = {"config", "build", "pull", "up", "down", "ps", "logs", "exec", "run", "stop", "start",
                       "restart", "cp", "rm"}
COMPOSE_GLOBALS = {"--profile", "--env-file", "-f", "--file", "-p", "--project-name"}
COMPOSE_VALUES = {"-e", "--env", "-u", "--user", "-w", "--workdir", "--tail", "--since", "--until", "--timeout", "-p",
                  "--publish", "--entrypoint", "--name", "-v", "--volume", "--scale", "--index", "--pull", "-l",
                  "--label", "--format", "--build-arg"}  # (logs -f: follow)


def run_argv(service: dict, options: list[tuple[str, str]], argv: list[str]) -> list[str]:
    """What ``docker compose run SERVICE ARGV`` executes: --entrypoint, the service's, or (built
    from infra/docker/Dockerfile) the image's ENTRYPOINT, then ARGV."""
    given = [v for n, v in options if n == "--entrypoint"] or service.get("entrypoint")
    if given is None and "build" in service:
        given = json.loads(re.search(r"^ENTRYPOINT (\[.*\])", DOCKERFILE.read_text(), re.M)[1])
    return (shlex.split(given) if isinstance(given, str) else list(given or [])) + argv


def compose(command: Command, shell: Shell) -> None:
    """``docker compose SUBCOMMAND`` from infra/compose, with services of compose.yaml; ``config``
    runs with .env.example; the ``study ...`` that ``exec``/``run`` execute is parsed by the CLI."""
    if command.words[1:3] == ["volume", "rm"]:
        return compose_volume(command)
    if command.words[1:2] != ["compose"] or shell.cwd != COMPOSE_DIR:
        raise command.fail("only docker compose (and docker volume rm), from infra/compose, here")
    globals_, rest, _ = parse_options(command.words[2:], COMPOSE_GLOBALS, until_positional=True)
    sub, services = (rest or [""])[0], load_compose()["services"]
    if sub not in COMPOSE_SUBCOMMANDS:
        raise command.fail(f"docker compose {sub}: not one of {', '.join(sorted(COMPOSE_SUBCOMMANDS))}")
    profiles = [v for n, v in globals_ if n == "--profile"]
    if sub == "config":
        result = run_compose(COMPOSE_FILE, ENV_EXAMPLE, *(f"--profile={p}" for p in profiles), *rest)
        if result.returncode:
            raise command.fail(f"docker compose config (with .env.example) failed: {result.stderr.strip()}")
    options, names, _ = parse_options(rest[1:], COMPOSE_VALUES, until_positional=sub in ("exec", "run"))
    if sub in ("exec", "run") and names:
        argv = run_argv(services.get(names[0], {}), options, names[1:]) if sub == "run" else names[1:]
        argv, names = argv[2:] if argv[:2] == ["tini", "--"] else argv, names[:1]
        if argv[:1] == ["study"]:
            parse_study(argv[1:], command)
    names = [n.split(":", 1)[0] for n in names if ":" in n] if sub == "cp" else names
    unknown = [n for n in names if n not in services] + [
        p for p in profiles if not any(p in s.get("profiles", []) for s in services.values())]
    if unknown:
        raise command.fail(f"no service or profile {', '.join(unknown)} in infra/compose/compose.yaml")


def compose_volume(command: Command) -> None:
    """``docker volume rm PROJECT_VOLUME``: a named volume of compose.yaml, as Docker names it."""
    data = load_compose()
    known = {f"{data['name']}_{volume}" for volume in data.get("volumes", {})}
    unknown = [name for name in command.words[3:] if name not in known]
    if unknown or len(command.words) < 4:
        raise command.fail(f"docker volume rm: {', '.join(unknown) or 'no volume'} is not one of {', '.join(sorted(known))}")


def copy_file(command: Command, shell: Shell) -> None:
    """``cp SOURCE TARGET`` of a file that exists here (``cp .env.example .env``)."""
    if len(command.words) != 3 or not (shell.cwd / command.words[1]).is_file():
        raise command.fail(f"cp: no file {command.words[1:2]} here ({shell.cwd.relative_to(ROOT)})")


def static_problems(block: Block, shell: Shell, programs: dict) -> list[str]:
    """Each command of ``block`` through the handler of its program in ``programs``."""
    try:
        found, problems = commands(block), []
    except GuideError as error:
        return [str(error)]
    for command in found:
        try:
            if command.words[0] not in programs:
                raise command.fail(f"{command.words[0]} is not a program this check knows "
                                   f"(it knows: {', '.join(sorted(programs))})")
            programs[command.words[0]](command, shell)
        except GuideError as error:
            problems.append(str(error))
    return problems


def check_static(block: Block, blocks: list[Block], programs: dict, start: Path) -> list[str]:
    """static_problems of ``block``, after the earlier blocks of its check (replayed for the
    objects they create); each block starts in ``start``."""
    shell = Shell(start)
    for earlier in [b for b in blocks if b.number < block.number and b.check == block.check]:
        static_problems(earlier, shell, programs)
        shell.cwd = start
    return static_problems(block, shell, programs)


# --- the checks, by the name in ```bash check=NAME ---------------------------------------------------

def check_study(block: Block, blocks: list[Block]) -> list[str]:
    """study commands (and cd, export, eval "$(study ...)"), parsed by the real CLI."""
    return check_static(block, blocks, {"study": study_command, "eval": eval_study, "cd": change_directory,
                                        "export": simple}, ROOT)


def check_k8s(block: Block, blocks: list[Block]) -> list[str]:
    """kubectl, helm, kustomize, docker build/push, aws s3, validated against infra/k8s (guide_k8s.py,
    imported here: it builds on this module)."""
    from tests.infra import guide_k8s

    return check_static(block, blocks, guide_k8s.PROGRAMS, ROOT)


def check_compose(block: Block, blocks: list[Block]) -> list[str]:
    """docker compose and .env handling, validated against infra/compose, from there."""
    return check_static(block, blocks, {**COMMON, "docker": compose, "cp": copy_file, "chmod": simple,
                                        "$EDITOR": simple}, COMPOSE_DIR)


def check_compose_backup(block: Block, blocks: list[Block]) -> list[str]:
    """Run the block against local servers (guide_runs.py): every database dumped, the bucket copied."""
    with local_compose() as stack:
        return stack.run(block) or stack.backup_problems()


def check_compose_restore(block: Block, blocks: list[Block]) -> list[str]:
    """Run the guide's last compose-backup block before it, lose the data, run the block: all back."""
    backups = [b for b in blocks if b.check == "compose-backup" and b.number < block.number]
    if not backups:
        return [f"{block.id}: no compose-backup block before it to restore from"]
    with local_compose() as stack:
        problems = stack.run(backups[-1]) or stack.backup_problems()
        if problems:
            return [f"the backup ({backups[-1].id}) failed: {p}" for p in problems]
        stack.damage()
        return stack.run(block) or stack.restore_problems()


CHECKS: dict[str, Callable[[Block, list[Block]], list[str]]] = {
    "study": check_study, "k8s": check_k8s, "compose": check_compose,
    "compose-backup": check_compose_backup, "compose-restore": check_compose_restore,
}
