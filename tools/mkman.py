#!/usr/bin/python3 -I
"""Write the man pages in man/ from what the project already says, so that there is no second
copy to drift: slurmjwt(1) and slurmjwtd(8) from the click commands (their help, options and
arguments) and docs/cli.md and README.md; pam_slurmjwt(8) from pam/README.md; slurmjwtd.toml(5)
from docs/configuration.md, whose keys tests/unit/test_man.py checks against config.describe_keys.

Markdown is converted by a small subset converter (headings, paragraphs, lists, fenced code,
tables as tagged paragraphs, `code`, **bold**, *emphasis*, links as their text).

    tools/mkman.py [--check] [OUTDIR]     (default OUTDIR: man/ beside tools/)

--check: write nothing; exit 1 naming each page that is not what would be written.
Run with Debian's python3 (-I: the checkout's slurmjwtd, Debian's click), as `make man` does.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import click  # noqa: E402

from slurmjwtd import __version__  # noqa: E402
from slurmjwtd import cli, main as daemon  # noqa: E402

SOURCE = f"slurmjwt {__version__}"


# -- roff text --------------------------------------------------------------------------------
def escape(text: str) -> str:
    """Plain TEXT for roff: backslashes, dashes that are minus signs, non-ASCII as \\[uXXXX]."""
    text = text.replace("\\", "\\e")
    return "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)


def minus(text: str) -> str:
    """Dashes in options and names as roff's minus sign, so that they can be copied and searched."""
    return text.replace("-", "\\-")


def line_start(text: str) -> str:
    """A line of text that roff must not take for a request."""
    return "\\&" + text if text[:1] in (".", "'") else text


def inline(text: str) -> str:
    """Markdown's inline marks as roff fonts: `code`, **bold**, *emphasis*, [text](link)."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
        if i % 2:
            out.append("\\fB" + escape(part[1:-1]).replace("-", "\\-") + "\\fR")
            continue
        part = part.replace("\\|", "|").replace("\\*", "*").replace("\\_", "_")
        part = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", part)
        part = escape(part)
        part = re.sub(r"\*\*(.+?)\*\*", r"\\fB\1\\fR", part)
        part = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"\\fI\1\\fR", part)
        out.append(part)
    return "".join(out)


def cells(row: str) -> list[str]:
    row = row.strip()
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip("|"))]


def markdown(text: str, skip_table: str | None = None) -> str:
    """TEXT, a Markdown document's body (no H1), as man(7) requests. SKIP_TABLE: leave out the
    table whose first header cell is this."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("```"):
            block = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                block.append(lines[i])
                i += 1
            i += 1
            out += [".PP", ".RS 4", ".nf"]
            out += [line_start(escape(b)) if b else "" for b in block]
            out += [".fi", ".RE"]
        elif line.startswith("#"):
            level, _, title = line.partition(" ")
            title = re.sub(r"`([^`]*)`", r"\1", title)
            top = len(level) <= 2
            out.append((".SH " if top else ".SS ") + f'"{escape(title.upper() if top else title)}"')
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(cells(lines[i]))
                i += 1
            header, body = rows[0], [r for r in rows[1:] if not re.fullmatch(r"[-: ]*", "".join(r))]
            if skip_table is not None and header[0] == skip_table:
                continue
            for row in body:
                middle = [f"{h} {c}" for h, c in zip(header[1:-1], row[1:-1]) if c]
                tag = inline(row[0]) or "\\&"
                what = inline(row[-1])
                if middle:
                    what = "(" + inline(", ".join(middle)) + ") " + what
                out += [".TP", line_start(tag), line_start(what)]
        elif re.match(r"(-|\d+\.) ", line):
            while i < len(lines) and re.match(r"(-|\d+\.) ", lines[i]):
                item = [lines[i].split(" ", 1)[1]]
                i += 1
                while i < len(lines) and lines[i].startswith("  ") and lines[i].strip():
                    item.append(lines[i].strip())
                    i += 1
                out += [".IP \\(bu 2", line_start(inline(" ".join(item)))]
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"(```|#|\||- |\d+\. )", lines[i]):
                para.append(lines[i].strip())
                i += 1
            out += [".PP", line_start(inline(" ".join(para)))]
    return "\n".join(out) + "\n"


def sections(path: Path) -> tuple[str, dict[str, str]]:
    """PATH's Markdown: the text before its first ## heading (without the H1), and each ##
    section's body by its title."""
    text = path.read_text()
    text = re.sub(r"\A# [^\n]*\n", "", text)
    parts = re.split(r"(?m)^## (.*)\n", text)
    return parts[0], dict(zip(parts[1::2], parts[2::2]))


def header(name: str, section: int, manual: str, summary: str) -> str:
    return (f'.TH {name.upper()} {section} "" "{SOURCE}" "{manual}"\n.nh\n.ad l\n'
            f".SH NAME\n{minus(escape(name))} \\- {escape(summary)}\n")


# -- click ------------------------------------------------------------------------------------
def help_text(text: str) -> str:
    """A click command's help (paragraphs; `\\b` blocks kept as they are) as roff."""
    out = []
    for para in re.split(r"\n\s*\n", click.unstyle(text).strip()):
        if para.startswith("\b"):
            out += [".PP", ".nf", *(line_start(escape(x)) for x in para[1:].strip("\n").splitlines()), ".fi"]
        else:
            out += [".PP", line_start(inline(" ".join(x.strip() for x in para.splitlines())))]
    return "\n".join(out) + "\n"


def options(command: click.Command, ctx: click.Context) -> str:
    out = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, what = record
        out += [".TP", "\\fB" + escape(names).replace("-", "\\-") + "\\fR",
                line_start(inline(what or ""))]
    return "\n".join(out) + "\n"


def usage(command: click.Command, ctx: click.Context) -> str:
    pieces = " ".join(command.collect_usage_pieces(ctx))
    return f"\\fB{minus(escape(ctx.command_path))}\\fR {escape(pieces)}"


def slurmjwt_1() -> str:
    group = cli.main
    ctx = click.Context(group, info_name="slurmjwt")
    intro, docs = sections(ROOT / "docs" / "cli.md")
    intro = re.sub(r"(?s)\A```.*?```\n", "", intro.lstrip())  # its synopsis: ours is click's
    out = [header("slurmjwt", 1, "User Commands", "get and inspect short-lived Slurm JWTs from slurmjwtd"),
           ".SH SYNOPSIS\n", "\\fBslurmjwt\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...\n",
           ".SH DESCRIPTION\n", help_text(group.help or ""), markdown(intro, skip_table="command"),
           ".SH OPTIONS\n", options(group, ctx), ".SH COMMANDS\n"]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        sub = click.Context(command, info_name=name, parent=ctx)
        out += [f".SS {name}\n", usage(command, sub) + "\n", help_text(command.help or ""),
                options(command, sub)]
    for title, body in docs.items():
        out.append(markdown(f"## {title}\n{body}"))
    out.append(".SH SEE ALSO\n\\fBslurmjwtd\\fR(8), \\fBslurmjwtd.toml\\fR(5), \\fBpam_slurmjwt\\fR(8), "
               "\\fBscontrol\\fR(1), \\fBcurl\\fR(1)\n")
    return "".join(out)


def slurmjwtd_8() -> str:
    command = daemon.main
    ctx = click.Context(command, info_name="slurmjwtd")
    intro, readme = sections(ROOT / "README.md")
    statuses = (daemon.__doc__ or "").split("Exit status:", 1)[1].strip()
    out = [header("slurmjwtd", 8, "System Administration", "the slurmjwt token daemon"),
           ".SH SYNOPSIS\n", usage(command, ctx) + "\n", ".SH DESCRIPTION\n",
           help_text(command.help or ""), markdown(intro),
           ".SH OPTIONS\n", options(command, ctx),
           markdown("## Running the daemon\n" + readme["Running the daemon"]),
           ".SH EXIT STATUS\n", ".PP\n", line_start(escape(" ".join(statuses.split()))) + "\n",
           ".SH FILES\n", ".TP\n\\fI/etc/slurmjwt/slurmjwtd.toml\\fR\nthe configuration, "
           "\\fBslurmjwtd.toml\\fR(5)\n",
           ".SH SEE ALSO\n\\fBslurmjwt\\fR(1), \\fBslurmjwtd.toml\\fR(5), \\fBpam_slurmjwt\\fR(8), "
           "\\fBslurm.conf\\fR(5), \\fBsystemd.socket\\fR(5)\n"]
    return "".join(out)


def pam_slurmjwt_8() -> str:
    intro, parts = sections(ROOT / "pam" / "README.md")
    out = [header("pam_slurmjwt", 8, "Linux-PAM Manual", "PAM session module giving each login a Slurm JWT"),
           ".SH SYNOPSIS\n", "\\fBsession optional pam_slurmjwt.so\\fR [\\fIARGUMENTS\\fR]\n",
           ".SH DESCRIPTION\n", markdown(intro)]
    out += [markdown(f"## {title}\n{body}") for title, body in parts.items()]
    out.append(".SH SEE ALSO\n\\fBslurmjwtd\\fR(8), \\fBslurmjwt\\fR(1), \\fBpam\\fR(8), "
               "\\fBsshd_config\\fR(5)\n")
    return "".join(out)


def slurmjwtd_toml_5() -> str:
    intro, parts = sections(ROOT / "docs" / "configuration.md")
    out = [header("slurmjwtd.toml", 5, "File Formats", "slurmjwtd's configuration file"),
           ".SH SYNOPSIS\n", "\\fI/etc/slurmjwt/slurmjwtd.toml\\fR\n",
           ".SH DESCRIPTION\n", markdown(intro)]
    out += [markdown(f"## {title}\n{body}") for title, body in parts.items()]
    out.append(".SH SEE ALSO\n\\fBslurmjwtd\\fR(8), \\fBslurmjwt\\fR(1), \\fBpam_slurmjwt\\fR(8)\n")
    return "".join(out)


PAGES = {"slurmjwt.1": slurmjwt_1, "slurmjwtd.8": slurmjwtd_8, "pam_slurmjwt.8": pam_slurmjwt_8,
         "slurmjwtd.toml.5": slurmjwtd_toml_5}


def write_or_check(tool: str, files: dict[str, Callable[[], str]], argv: list[str],
                   default_dir: Path, target: str) -> int:
    """Write each of FILES (name: its maker) into OUTDIR (argv's, else DEFAULT_DIR), where it
    differs; with --check write nothing and exit 1 naming those that are not current. Shared
    with tools/mkcompletion.py."""
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    outdir = Path(args[0]) if args else default_dir
    stale = []
    for name, make in files.items():
        text = make()
        path = outdir / name
        if path.exists() and path.read_text() == text:
            continue
        if check:
            stale.append(name)
            continue
        outdir.mkdir(exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"{tool}: not current in {outdir}: {', '.join(stale)} (run: make {target})",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    return write_or_check("mkman", PAGES, argv, ROOT / "man", "man")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
