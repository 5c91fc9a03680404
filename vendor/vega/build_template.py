"""Write offline.html: DVC's plots page with the Vega libraries inlined (no CDN).

Usage (the versions DVC's renderer loads from its CDN, dvc_render.vega.VegaRenderer):

    npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    for t in *.tgz; do mkdir -p "${t%.tgz}"; tar xzf "$t" -C "${t%.tgz}"; done
    python vendor/vega/build_template.py .   # the folder holding the unpacked packages

`.dvc/config` points `plots.html_template` at the result, so `dvc plots show` and
`dvc plots diff` write pages that render offline (cluster nodes, file systems).
"""

import sys
from pathlib import Path

PACKAGES = [("vega-5.20.2", "vega.min.js"), ("vega-lite-5.2.0", "vega-lite.min.js"),
            ("vega-embed-6.18.2", "vega-embed.min.js")]  # fmt: skip


def main(src: str) -> None:
    scripts = []
    for pkg, name in PACKAGES:
        js = (Path(src) / pkg / "package" / "build" / name).read_text(encoding="utf-8")
        if "</script" in js:
            raise SystemExit(f"{pkg}/{name} contains </script>: cannot be inlined")
        banner = f"<!-- {pkg} ({name}, BSD-3-Clause, see LICENSE-*) -->"
        scripts.append(f"{banner}\n<script>{js}</script>")
    page = f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>astrobatch: DVC plots</title>
{"".join(scripts)}
<style>
body {{ font-family: sans-serif; }}
table {{ border-spacing: 15px; }}
</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""
    (Path(__file__).parent / "offline.html").write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
