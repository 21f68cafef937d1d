"""What tells one build of the demo from another.

The page's cards build a copy of the demo's own source with this file
rewritten (see builds.py): a new LABEL and COLOR for a release shipped
blue-green, a new GREETING for a hot reload. The rest of the app reads these
as ``variant.NAME`` when it answers a request, never at import and never as a
``from demo.variant import NAME`` copy: then a hot reload can patch a changed
constant in place (it refuses one that was copied or read at import).
"""

LABEL = "blue"
COLOR = "#2563eb"
GREETING = "Hello"
