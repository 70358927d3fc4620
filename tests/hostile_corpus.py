"""Hostile input: strings a careless parser turns into a shell command, an XML
element, a path outside its directory, a second header, or a crash.

None of them is a valid name, number, port, path or reference in Strata, so
every strict field must refuse each of them; a free-text field may instead
store one exactly as it was sent.
"""

STRINGS = [
    # shell
    "$(reboot)",
    "`id`",
    "a; rm -rf / #",
    "x && curl 127.0.0.1 | sh",
    "web|nc -l 4444",
    "${IFS}cat${IFS}/etc/shadow",
    "web'\"",
    "-rf",
    "--privileged",
    # XML and HTML
    "<domain type='kvm'/>",
    "<script>alert(1)</script>",
    "]]><!--",
    '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
    "&amp;&lt;",
    # YAML and JSON
    "!!python/object/apply:os.system ['id']",
    "key: value\nother: [1, 2]",
    "{{7*7}}",
    '{"$gt": ""}',
    "null",
    "true",
    # paths
    "../../../etc/passwd",
    "/etc/shadow",
    "..",
    ".",
    "/",
    "C:\\Windows\\system32",
    "data:/",
    "data:/x/../..",
    "data:/x\n",
    "/var/lib/docker.sock:/var/run/docker.sock",
    # URLs and references
    "http://169.254.169.254/latest/meta-data/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    'json:{"file":"/etc/shadow"}',
    "nginx:1.27\n",
    "nginx@sha256:../../x",
    "UPPER:Case",
    "registry.example.com:5000/x:y:z",
    # unicode
    "Ünïcødé-名前",
    "web\u200b",
    "w\u0435b",  # a Cyrillic e
    "\u202egnp.exe",
    "\ufeffweb",
    "٨٠",  # Arabic-Indic digits: "80" to str.isdigit()
    "🙂",
    # control characters and whitespace
    "web\n",
    "web\r\nX-Injected: 1",
    "bad\x00name",
    "\x1b[2J\x1b[31mred",
    "\t",
    " web",
    "",
    "FOO\n",
    # numbers as text
    "-1",
    "-2147483649",
    "99999999999999999999999999",
    "1e309",
    "NaN",
    "-Infinity",
    "0x16",
    "22.5",
    # huge
    "a" * 100_000,
    "x" * 41,
]

# Values of the wrong JSON type, for the API, whose bodies are JSON.
WRONG_TYPES = [10**30, -(2**63), -1, -1.5, 1e308, None, [], {}, ["nested", ["list"]], {"a": 1}]

API_VALUES = [*STRINGS, *WRONG_TYPES]

assert len(STRINGS) >= 50 and len(set(STRINGS)) == len(STRINGS)
