"""Vendor the NHS.UK frontend's compiled CSS and JS into ``static/`` from an unpacked npm package.

Run by a developer when moving to a new release, never at install or run time::

    npm pack nhsuk-frontend@10.6.1 && tar xzf nhsuk-frontend-10.6.1.tgz
    python -m gateway.console.vendoring package/

It copies ``dist/nhsuk/nhsuk-frontend.min.{css,js}`` and ``dist/nhsuk/assets/`` and makes two
changes to the CSS so that nothing is fetched from outside the gateway (users' networks may have
no internet):

- the ``@font-face`` rules that load Frutiger from ``assets.nhs.uk`` are removed: the font is
  licensed to NHS.UK and cannot be shipped here, so text falls back to the design system's own
  fallback stack (Arial, sans-serif);
- ``url(/assets/...)`` becomes ``url(assets/...)``, relative to the CSS file under ``/console/static``.

Then update ``FRONTEND_VERSION`` in ``gateway/console/templating.py`` and ``static/README.md``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Final

STATIC: Final = Path(__file__).with_name("static")
_FONT_FACE: Final = re.compile(r"@font-face\{[^}]*\}")
_ROOT_ASSETS: Final = re.compile(r"url\((['\"]?)/assets/")
_REMOTE: Final = re.compile(r"url\((['\"]?)(https?:)?//")


def localise_css(css: str) -> str:
    """The CSS with remote fonts dropped and asset URLs made relative; refuses any remote URL left."""
    css = _FONT_FACE.sub("", css)
    css = _ROOT_ASSETS.sub(r"url(\1assets/", css)
    if _REMOTE.search(css):
        raise ValueError("the CSS still refers to a remote URL")
    return css


def vendor(package: Path, static: Path = STATIC) -> str:
    """Copy the compiled frontend from an unpacked npm package into ``static``; the version copied."""
    version = str(json.loads((package / "package.json").read_text())["version"])
    dist = package / "dist" / "nhsuk"
    static.mkdir(parents=True, exist_ok=True)
    css = localise_css((dist / "nhsuk-frontend.min.css").read_text(encoding="utf-8"))
    (static / "nhsuk-frontend.min.css").write_text(css, encoding="utf-8")
    js = (dist / "nhsuk-frontend.min.js").read_text(encoding="utf-8")
    js = re.sub(r"//# sourceMappingURL=\S+\s*$", "", js)  # the map is not vendored
    (static / "nhsuk-frontend.min.js").write_text(js, encoding="utf-8")
    shutil.rmtree(static / "assets", ignore_errors=True)
    shutil.copytree(dist / "assets", static / "assets")
    return version


if __name__ == "__main__":
    print(vendor(Path(sys.argv[1])))
