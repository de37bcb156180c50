"""Development sessions: ``nox`` runs lint, typecheck and tests; ``nox -s docs`` / ``bench``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite with branch coverage (fails under 90 %)."""
    session.install("-e", ".[test,cli]")
    session.run(
        "pytest",
        "--cov=kling_async",
        "--cov-branch",
        "--cov-report=term-missing:skip-covered",
        "--cov-fail-under=90",
        *session.posargs,
    )


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with ``mypy --strict``."""
    session.install("-e", ".[cli]", "mypy>=1.11")
    session.run("mypy", "--strict", "kling_async")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site; warnings are errors."""
    session.install("-e", ".[docs,cli]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks and print their figures."""
    session.install("-e", ".")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
