#!/usr/bin/env python3
"""Make the detector test photos in tests/fixtures/ from the test images of face_recognition 1.3.0.

The sdist of `face_recognition` (MIT, Adam Geitgey) ships official White House photographs
(public domain, works of the U.S. federal government) in tests/test_images/. This script makes:
  - two_portraits.png (370x216): the upper parts of biden.jpg and obama3.jpg side by side, two faces
    of about 60x80 px; sizes not multiples of 8, 16 or 32, so the FPN upsampling is not exactly 2x;
  - obama_241x301.png: obama.jpg downscaled to an odd size, one face.

    pip download --no-deps --no-binary :all: -d /tmp/fr face-recognition==1.3.0
    tar xzf /tmp/fr/face_recognition-1.3.0.tar.gz -C /tmp/fr
    pip install pillow==13.0.0
    python3 tools/make_detect_fixtures.py /tmp/fr/face_recognition-1.3.0/tests/test_images tests/fixtures
"""
import os
import sys

from PIL import Image


def top_part(image, fraction, height):
    crop = image.crop((0, 0, image.width, int(image.height * fraction)))
    return crop.resize((round(crop.width * height / crop.height), height), Image.LANCZOS)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source, target = sys.argv[1:]
    biden = top_part(Image.open(os.path.join(source, "biden.jpg")).convert("RGB"), 0.45, 300)
    obama = top_part(Image.open(os.path.join(source, "obama3.jpg")).convert("RGB"), 0.45, 300)
    side_by_side = Image.new("RGB", (biden.width + obama.width, 300))
    side_by_side.paste(biden, (0, 0))
    side_by_side.paste(obama, (biden.width, 0))
    # Keep the two people, drop the chandelier between them.
    left, right = side_by_side.crop((40, 0, 294, 300)), side_by_side.crop((400, 0, 660, 300))
    pair = Image.new("RGB", (left.width + right.width, 300))
    pair.paste(left, (0, 0))
    pair.paste(right, (left.width, 0))
    pair = pair.resize((round(pair.width * 0.72), 216), Image.LANCZOS)
    pair.save(os.path.join(target, "two_portraits.png"), optimize=True)
    single = Image.open(os.path.join(source, "obama.jpg")).convert("RGB").resize((241, 301), Image.LANCZOS)
    single.save(os.path.join(target, "obama_241x301.png"), optimize=True)


if __name__ == "__main__":
    main()
