"""Bearer tokens of the scorer: who may score, reload and read metrics.

Pure: the standard library only.

Three roles, each with its own tokens (a token of one role is refused by the others):

* ``score``   ``POST /score`` and the model details of ``GET /health``; one or more tokens,
  so that clients can rotate without a gap (add the new token, move the clients, drop
  the old one);
* ``admin``   ``POST /reload``;
* ``metrics`` ``GET /metrics`` (Prometheus' scrape credential): the metrics name the served
  version, its age and the error rates, which anonymous callers must not learn.

Each role reads ``SCORER_<ROLE>_TOKENS`` (tokens separated by commas or whitespace) or
``SCORER_<ROLE>_TOKENS_FILE`` (a mounted Kubernetes Secret key: one token per line, ``#``
comments allowed). A file is re-read when it changes (``TokenSource.refresh``), since the
kubelet rewrites mounted Secrets on rotation. A role with no token is a configuration
error at start-up: the scorer never runs open by accident. Tokens shorter than
``MIN_TOKEN_CHARS`` are refused (a guessable token is no authentication).

A presented token is compared with every token of the role by ``hmac.compare_digest``,
without stopping at the first match, so the time taken says nothing about which token, or
how much of one, matched. Status codes: 401 when no bearer token was sent (with
``WWW-Authenticate: Bearer``), 403 when the token is not one of the role's; neither answer
names a model, a version or which tokens exist.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROLES = ("score", "admin", "metrics")
MIN_TOKEN_CHARS = 16
_SPLIT = re.compile(r"[\s,]+")


class AuthConfigError(ValueError):
    """Tokens that cannot be used (none, too short, shared between roles, unreadable)."""


def env_names(role: str) -> tuple[str, str]:
    """(tokens variable, tokens-file variable) of a role."""
    stem = f"SCORER_{role.upper()}_TOKENS"
    return stem, stem + "_FILE"


def parse_tokens(text: str, where: str) -> tuple[str, ...]:
    """Tokens in ``text`` (comma/whitespace separated; ``#`` starts a comment)."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    tokens = tuple(t for line in lines for t in _SPLIT.split(line) if t)
    short = [i for i, t in enumerate(tokens) if len(t) < MIN_TOKEN_CHARS]
    if short:
        # positions only: an error message must never carry a token
        raise AuthConfigError(
            f"{where}: token(s) at position {short} are shorter than {MIN_TOKEN_CHARS} "
            "characters (generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return tokens


class TokenSource:
    """The tokens of one role, from the environment or a file that may be rotated."""

    def __init__(self, role: str, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.role = role
        var, file_var = env_names(role)
        self._path = Path(env[file_var]) if env.get(file_var) else None
        self._stamp: tuple[int, int] | None = None
        if self._path is None:
            self.tokens = parse_tokens(env.get(var, ""), var)
            self.where = var
        else:
            self.where = f"{file_var}={self._path}"
            self.tokens = ()
            self.refresh()
        if not self.tokens:
            raise AuthConfigError(
                f"no {role} token: set {var} or {file_var} (the scorer refuses to run open)"
            )

    def refresh(self) -> bool:
        """Re-read the token file if it changed; True when the tokens changed. A file that
        became empty or unreadable keeps the previous tokens (and raises)."""
        if self._path is None:
            return False
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            tokens = parse_tokens(self._path.read_text(), self.where)
        except OSError as exc:
            raise AuthConfigError(f"{self.where}: cannot read the {self.role} tokens: {exc}") from exc
        if not tokens and self.tokens:
            raise AuthConfigError(f"{self.where}: now holds no {self.role} token; keeping the old ones")
        self._stamp = stamp
        changed = tokens != self.tokens
        self.tokens = tokens
        return changed


@dataclass(frozen=True)
class Denied:
    """Why a request is refused: HTTP status, a message that names no secret or model."""

    status: int
    message: str
    kind: str  # for the errors-by-kind metric: auth_missing | auth_invalid


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def token_matches(presented: str, tokens: tuple[str, ...]) -> bool:
    """True if ``presented`` is one of ``tokens``; every token is compared in constant time
    and all of them are compared whatever the outcome."""
    candidate = presented.encode()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(candidate, token.encode())
    return found


def check(authorization: str | None, tokens: tuple[str, ...], role: str) -> Denied | None:
    """None if the header carries one of ``tokens``, else why not."""
    presented = bearer_token(authorization)
    if presented is None:
        return Denied(401, f"a bearer token ({role}) is required: Authorization: Bearer <token>",
                      "auth_missing")
    if not token_matches(presented, tokens):
        return Denied(403, f"the bearer token is not valid for {role}", "auth_invalid")
    return None


class Tokens:
    """The three roles' sources; start-up fails unless every role has tokens and no token
    belongs to two roles (the admin token must not also score, and so on)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.sources = {role: TokenSource(role, env) for role in ROLES}
        self._check_disjoint()

    def _check_disjoint(self) -> None:
        for i, a in enumerate(ROLES):
            for b in ROLES[i + 1:]:
                if set(self.sources[a].tokens) & set(self.sources[b].tokens):
                    raise AuthConfigError(
                        f"a token is shared by the {a} and {b} roles "
                        f"({self.sources[a].where}, {self.sources[b].where}); give each role its own"
                    )

    def check(self, role: str, authorization: str | None) -> Denied | None:
        return check(authorization, self.sources[role].tokens, role)

    def refresh(self) -> list[str]:
        """Re-read changed token files; the roles whose tokens changed. A rotation that
        would make two roles share a token is undone (the old tokens stay)."""
        before = {role: s.tokens for role, s in self.sources.items()}
        changed = [role for role, s in self.sources.items() if s.refresh()]
        if changed:
            try:
                self._check_disjoint()
            except AuthConfigError:
                for role, tokens in before.items():
                    self.sources[role].tokens = tokens
                raise
        return changed
