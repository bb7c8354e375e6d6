"""What must never be shown, in one place: secrets, credential-looking names, and how to cut.

``Secrets`` holds the values of one run that are secrets (SPEC: Secrets) in every form
they may take on the way out: as they are, percent-encoded (``quote``, ``quote_plus``)
and as httpx writes them into a URL's query. ``redact`` replaces each with ``***``,
longest first. ``redact_tree`` does it through a JSON-like value (alert payloads).

Text is always redacted whole and only then cut (``clip``): cutting first can leave
``…supersecretval`` that no longer matches the secret.

``credential_name`` tells a query parameter or header whose *name* says it is a
credential (``api_key``, ``X-Auth-Token``, ``accessToken``) even when its value did not
come from ``${VAR}``; ``in_query_or_userinfo`` tells where in a URL template a ``${VAR}``
sits. ``redact_url`` hides a database URL's password, even one holding a raw ``/``, ``@`` or
``%`` (which ``misencoded_password`` tells, so the store can refuse it before libpq quotes a
piece of it). Pure, and without ``re`` until a pattern is used (``Pattern``): every cron
tick imports this module and checks every environment variable's name (``secret_name``).
"""

from __future__ import annotations

from schedsync.core import Pattern

# A ${VAR}, an env: entry or an environment variable with one of these in its name is a secret.
SECRET_WORDS = ("TOKEN", "SECRET", "KEY", "PASS", "AUTH", "CRED")
SECRET_NAME = Pattern("(?i)" + "|".join(SECRET_WORDS))
MIN_LENGTH = 4  # shorter values are not treated as secrets: redacting "1" would wreck every line
# Values of secret-named environment variables that are settings, not credentials: redacting
# every "true" in a job's output would make it unreadable and hide nothing.
NOT_SECRET = {"true", "false", "none", "null"}

# Query parameters or headers whose values are credentials even when they did not come from
# ${VAR}: a name with one of these words (api_key, X-Auth, sig) or these inside it (accessToken).
CREDENTIAL_WORDS = {"key", "token", "secret", "sig", "signature", "pass", "passwd", "password",
                    "auth", "authorization", "credential", "credentials", "session", "code", "jwt",
                    "cookie"}
CREDENTIAL_PARTS = ("token", "secret", "apikey", "password")
_CREDENTIAL_SPLIT = Pattern(r"[_\-.\[\]]+")

# How httpx percent-encodes a URL's query: RFC 3986 unreserved characters and the WHATWG
# query set stay, existing %XX escapes stay, everything else is UTF-8 %XX.
# ``quote(value, safe="")`` and ``quote_plus`` keep only the unreserved characters (written
# out here so that a cron tick never imports urllib.parse).
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_QUERY_KEEP = _UNRESERVED | frozenset(chr(i) for i in range(0x20, 0x7F)
                                      if i not in (0x20, 0x22, 0x23, 0x3C, 0x3E))
_ESCAPE = Pattern("(%[A-Fa-f0-9]{2})")
_CONTROL = Pattern(r"[\x00-\x1f\x7f-\x9f]+")
# A JSON string escape: a surrogate pair, any \uXXXX (hex in either case) or a short one.
_JSON_ESCAPE = Pattern(r'\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}'
                          r'|\\u[0-9a-fA-F]{4}|\\["\\/bfnrt]')
_SHORT_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class Secrets:
    """Values that must never be shown; ``redact`` replaces each with ``***``."""

    def __init__(self):
        self.values: set[str] = set()
        self._order: list[str] | None = None

    def add(self, value: str) -> None:
        if value is None or len(value) < MIN_LENGTH:
            return
        quoted = "".join(c if c in _UNRESERVED else _percent(c) for c in value)
        forms = {value, quoted, quoted.replace("%20", "+"), query_form(value)}
        self.values.update(form for form in forms if len(form) >= MIN_LENGTH)
        self._order = None
        if "\n" in value or "\r" in value:
            # Output is redacted a line at a time and an error quotes one line: each line of
            # a multi-line secret is a secret too, trimmed, unless it is too short to be one.
            for line in value.splitlines():
                line = line.strip()
                if line != value and line.lower() not in NOT_SECRET:
                    self.add(line)

    @property
    def longest(self) -> int:
        """The length of the longest form a secret may take (JSON-escaped included)."""
        return max(map(_escaped_length, self.values), default=0)

    def redact(self, text):
        if not text or not self.values:
            return text
        order = self._order
        if order is None:
            order = self._order = sorted(self.values, key=len, reverse=True)
        for value in order:
            if value in text:
                text = text.replace(value, "***")
        return self._redact_escaped(text, order) if "\\" in text else text

    def _redact_escaped(self, text: str, order: list[str]) -> str:
        """``text`` without the secrets it holds JSON-escaped (``\\/`` for ``/``, ``\\u00e9``
        for ``é``, any character as ``\\uXXXX``): the escapes are decoded, the secrets found
        in that, and the spans they came from replaced in ``text``."""
        pieces, marks, last, size = [], [], 0, 0  # marks: (decoded at, original at, its length)
        for match in _JSON_ESCAPE.finditer(text):
            start = match.start()
            pieces.append(text[last:start])
            size += start - last
            marks.append((size, start, match.end() - start))
            pieces.append(_json_char(match.group()))
            size, last = size + 1, match.end()
        if not marks:
            return text
        pieces.append(text[last:])
        decoded = "".join(pieces)
        from bisect import bisect_right

        starts = [mark[0] for mark in marks]

        def original(index: int) -> int:
            i = bisect_right(starts, index) - 1
            if i < 0:
                return index
            at, source, length = marks[i]
            return source if index == at else source + length + index - at - 1

        cuts = []
        for value in order:
            found = decoded.find(value)
            while found >= 0:
                cuts.append((original(found), original(found + len(value))))
                found = decoded.find(value, found + len(value))
        if not cuts:
            return text
        out, done = [], 0
        for start, end in sorted(cuts):
            if end <= done:
                continue
            out.append(text[done:max(start, done)] + ("***" if start >= done else ""))
            done = end
        out.append(text[done:])
        return "".join(out)

    def holds(self, text: str) -> bool:
        """Whether ``text`` contains a secret (in any of its forms)."""
        return bool(text) and self.redact(text) != text

    def redact_tree(self, value):
        """``value`` (str, dict, list or a scalar) with every string in it redacted."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_tree(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact_tree(v) for v in value]
        return value

    def clip(self, text, limit: int) -> str:
        """``text`` redacted whole, then on one line (no control characters) and cut."""
        return clip(self.redact(str(text)), limit)


def _json_char(escape: str) -> str:
    """The character a JSON escape (``\\/``, ``\\u00e9``, a ``\\ud83d\\ude00`` pair) stands for."""
    if escape[1] != "u":
        return _SHORT_ESCAPES[escape[1]]
    if len(escape) == 12:
        high, low = int(escape[2:6], 16), int(escape[8:], 16)
        return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
    return chr(int(escape[2:], 16))


def _escaped_length(value: str) -> int:
    return sum(6 if ord(c) <= 0xFFFF else 12 for c in value)


def query_form(value: str) -> str:
    """``value`` as httpx percent-encodes it in a URL's query (``a b/c`` → ``a%20b/c``)."""
    if "%" not in value:  # no escape to keep: no pattern (a token in cron's environment, every tick)
        return "".join(c if c in _QUERY_KEEP else _percent(c) for c in value)
    parts = []
    for piece in _ESCAPE.split(value):
        if _ESCAPE.fullmatch(piece):
            parts.append(piece)
        else:
            parts.append("".join(c if c in _QUERY_KEEP else _percent(c) for c in piece))
    return "".join(parts)


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def clip(text, limit: int) -> str:
    """``text`` on one line: control characters and whitespace runs become one space,
    cut to ``limit`` characters with ``…``. Redact before calling this, never after."""
    text = " ".join(_CONTROL.sub(" ", str(text)).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def printable(text) -> str:
    """``text`` with control characters (NUL, newlines, escapes) as spaces; nothing cut."""
    return _CONTROL.sub(" ", str(text))


def readable(text):
    """``text`` that any UTF-8 encoder accepts: a byte that ``os.fsdecode`` kept as a lone
    surrogate (a file name that is not UTF-8) is shown as ``\\xff``. None stays None."""
    if not text:
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that no fsdecode made
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


# --- database URLs (state and data) --------------------------------------------------------

# A URL's query, as libpq reads it: name=value pairs joined by &.
_QUERY = Pattern(r"[A-Za-z_]+=[^&]*(?:&[A-Za-z_]+=[^&]*)*")
# What a password must not hold raw: libpq ends the user-info at the first '@' before any
# '/', and refuses a '%' that starts no %XX escape (quoting the rest of the URL).
_MISENCODED = Pattern(r"[/@]|%(?![0-9A-Fa-f]{2})")
MISENCODED_FIX = ("percent-encode them in the URL (/ as %2F, @ as %40, % as %25), "
                  "or leave the password out and put it in ~/.pgpass")


def _userinfo_end(rest: str) -> int:
    """The index of the '@' that ends the user-info of ``rest`` (a URL after ``://``), or -1.

    A password may hold a raw '/' or '@' that its owner did not percent-encode, so this is
    the *last* '@' (libpq's is the first before any '/'): whatever either reads as the
    password is then covered. An '@' in a query (``?application_name=a@b``) does not count."""
    first = rest.find("@")
    for q, char in enumerate(rest):
        if char == "?" and 0 <= first < q and _QUERY.fullmatch(rest, q + 1):
            return rest.rfind("@", 0, q)
    return rest.rfind("@")


def misencoded_password(url: str) -> bool:
    """Whether the URL's password holds a raw '/' or '@', or a '%' that starts no escape."""
    rest = url.partition("://")[2]
    end = _userinfo_end(rest)
    return end >= 0 and bool(_MISENCODED.search(rest[:end].partition(":")[2]))


def redact_url(url: str) -> str:
    """The URL with any password (user-info or ``password=`` parameter) as ***."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = _userinfo_end(rest)
    if end >= 0:
        user, colon, _ = rest[:end].partition(":")
        rest = user + (":***" if colon else "") + rest[end:]
    head, q, query = rest.partition("?")
    if "password=" in query:
        query = "&".join(("password=***" if p.startswith("password=") else p)
                         for p in query.split("&"))
    return f"{scheme}://{head}{q}{query}"


def strip_password(url: str) -> str:
    """The URL without its password (for a crontab line: libpq then reads ~/.pgpass)."""
    shown = redact_url(url)
    scheme, _, rest = shown.partition("://")
    head, q, query = rest.partition("?")
    head = head.replace(":***@", "@", 1)
    if "password=***" in query:
        query = "&".join(p for p in query.split("&") if p != "password=***")
        q = q if query else ""
    return f"{scheme}://{head}{q}{query}"


def secret_name(name: str) -> bool:
    """Whether ``name`` (a variable's) says it holds a secret: ``SECRET_NAME.search(name)``.
    An ASCII name (every environment's, in practice) is checked without ``re``: upper-casing
    is then exactly ``re.I``'s matching; any other goes through the pattern, whose ``re.I``
    also matches the Kelvin sign as K and the long s as S."""
    if name.isascii():
        upper = name.upper()
        return any(word in upper for word in SECRET_WORDS)
    return SECRET_NAME.search(name) is not None


def environment_secrets(environ, secrets: Secrets) -> None:
    """Add the value of every variable in ``environ`` whose name says it is a secret."""
    for name, value in environ.items():
        if secret_name(name) and value.lower() not in NOT_SECRET:
            secrets.add(value)


def credential_name(name: str) -> bool:
    """Whether a query parameter or header called ``name`` holds a credential by its name."""
    lowered = name.lower()
    return (any(part in CREDENTIAL_WORDS for part in _CREDENTIAL_SPLIT.split(lowered))
            or any(part in lowered for part in CREDENTIAL_PARTS))


def in_query_or_userinfo(url: str, pos: int) -> bool:
    """Whether position ``pos`` of ``url`` falls in its query or its user:password@ part."""
    if "?" in url[:pos]:
        return True
    start = url.find("://") + 3
    authority = url[start:].split("/", 1)[0]
    return start >= 3 and "@" in authority and start <= pos < start + authority.index("@")
