"""Image decoding, EXIF orientation, resizing and PNG text against Pillow (tests/tools/image_tool.cpp).

Tolerances, and why:
- PNG, BMP, WebP (lossless and lossy), JPEG (RGB, grey, CMYK with the Adobe marker): exact. Pillow's
  wheel bundles libjpeg-turbo and libwebp too; with the same IDCT (ISLOW) and fancy upsampling the
  pixels are identical across the versions in use (Debian libjpeg-turbo 2.1.5 / libwebp 1.2.4 here).
- Deliberate differences: 16-bit greyscale PNG (we keep the high byte, Pillow clips to 255: tested
  against the high byte), and CMYK JPEG without the Adobe marker (Pillow inverts it anyway; we take the
  values as ink amounts: tested against that formula).
- Resize: <= 1 level against Pillow's reduce (integer shrink) and LANCZOS (growth), which store the
  intermediate of their two passes in 8 bits. Area shrinking against OpenCV's cv2.resize(INTER_AREA)
  (opencv-python-headless; Pillow's BOX is not an area filter for fractional factors: up to 144 levels
  off on noise): integer factors exact; fractional factors <= 1 level with at most 1% of the values
  differing (measured 0.05-0.8%), because both sum float32 products in different orders and OpenCV rounds
  halves to even where we round them up, so a value within float32 error of .5 can round either way.
  RGBA: alpha <= 1, premultiplied colour <= 3 against Pillow (Pillow premultiplies into 8 bits, so
  straight colours at low alpha cannot be compared); against OpenCV, which resizes channels on their own,
  premultiplied around the call in float64: <= 1 level.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from conftest import run

RNG = np.random.default_rng(20240601)


def decode(tool, path, alpha=False, out=None) -> np.ndarray:
    out = out or Path(path).with_suffix(".raw")
    meta = json.loads(run([tool, "decode", path, out] + (["--alpha"] if alpha else [])).stdout)
    return np.fromfile(out, np.uint8).reshape(meta["height"], meta["width"], meta["channels"])


def resize(tool, path, w, h, alpha=False, out=None) -> np.ndarray:
    out = out or Path(path).with_suffix(".resized.raw")
    meta = json.loads(run([tool, "resize", path, w, h, out] + (["--alpha"] if alpha else [])).stdout)
    return np.fromfile(out, np.uint8).reshape(meta["height"], meta["width"], meta["channels"])


def probe(tool, path) -> dict:
    return json.loads(run([tool, "probe", path]).stdout)


def on_white(rgba: np.ndarray) -> np.ndarray:
    """The documented composite: round((c * a + 255 * (255 - a)) / 255)."""
    c, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def pil_reference(path, alpha=False) -> np.ndarray:
    im = ImageOps.exif_transpose(Image.open(path))
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if alpha:
        return np.asarray(im.convert("RGBA"))
    return on_white(np.asarray(im.convert("RGBA"))) if has_alpha else np.asarray(im.convert("RGB"))


def assert_same_decode(tool, path, alpha=False):
    ours, ref = decode(tool, path, alpha), pil_reference(path, alpha)
    assert ours.shape == ref.shape, path
    assert np.array_equal(ours, ref), f"{path}: max diff {np.abs(ours.astype(int) - ref).max()}"


def write_png(path, samples: np.ndarray, color_type: int, bit_depth: int, interlace=False, chunks=()):
    """A minimal PNG writer (16-bit and Adam7, which Pillow cannot write). samples: h x w x channels."""
    h, w = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else np.uint8

    def scanlines(a):
        return b"".join(b"\0" + row.astype(dtype).tobytes() for row in a)

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b"".join(scanlines(samples[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                       if samples[y0::dy, x0::dx].size)
    else:
        raw = scanlines(samples)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, int(interlace))
    body = chunk(b"IHDR", ihdr) + b"".join(chunk(k, d) for k, d in chunks)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def write_bmp(path, rows_top_first: list[bytes], w, h, bits, top_down=False, masks=None):
    header = 108 if masks else 40
    stride = (bits * w + 31) // 32 * 4
    pixels = b"".join(rows_top_first[i if top_down else h - 1 - i].ljust(stride, b"\0") for i in range(h))
    info = struct.pack("<IiiHHIIiiII", header, w, -h if top_down else h, 1, bits, 3 if masks else 0,
                       len(pixels), 2835, 2835, 0, 0)
    if masks:
        info = (info + struct.pack("<4I", *masks)).ljust(header, b"\0")
    offset = 14 + len(info)
    Path(path).write_bytes(b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels)


def noise(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def smooth(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h) + 64], -1).astype(np.uint8)


def test_png_decode_matches_pil(image_tool, tmp_path):
    rgb, rgba = noise(23, 31), noise(23, 31, 4)
    cases = {
        "rgb": Image.fromarray(rgb),
        "rgba": Image.fromarray(rgba),
        "grey": Image.fromarray(rgb[..., 0]),
        "grey_alpha": Image.fromarray(rgba[..., :2], "LA"),
        "palette": Image.fromarray(rgb).quantize(16),
        "bilevel": Image.fromarray(rgb[..., 0]).convert("1"),
    }
    for name, im in cases.items():
        im.save(tmp_path / f"{name}.png")
    Image.fromarray(rgb).quantize(16).save(tmp_path / "palette_trns.png", transparency=3)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey_trns.png", transparency=int(rgb[0, 0, 0]))
    for path in sorted(tmp_path.glob("*.png")):
        for alpha in (False, True):
            assert_same_decode(image_tool, path, alpha)
    # 16-bit colour (Pillow keeps the high byte, as we do) and Adam7 interlacing.
    rgb16 = RNG.integers(0, 65536, (13, 11, 3), dtype=np.uint16)
    rgba16 = RNG.integers(0, 65536, (13, 11, 4), dtype=np.uint16)
    write_png(tmp_path / "rgb16.png", rgb16, 2, 16)
    write_png(tmp_path / "rgba16_adam7.png", rgba16, 6, 16, interlace=True)
    write_png(tmp_path / "rgb_adam7.png", rgb, 2, 8, interlace=True)
    for name in ("rgb16", "rgba16_adam7", "rgb_adam7"):
        assert_same_decode(image_tool, tmp_path / f"{name}.png", alpha=True)
        assert_same_decode(image_tool, tmp_path / f"{name}.png")
    assert np.array_equal(decode(image_tool, tmp_path / "rgb16.png"), (rgb16 >> 8).astype(np.uint8))
    # 16-bit grey: Pillow clips to 255 (its I;16 -> L conversion); we keep the high byte.
    grey16 = RNG.integers(0, 65536, (9, 8, 1), dtype=np.uint16)
    write_png(tmp_path / "grey16.png", grey16, 0, 16)
    assert np.array_equal(decode(image_tool, tmp_path / "grey16.png"), np.repeat(grey16 >> 8, 3, -1).astype(np.uint8))


def test_jpeg_decode_matches_pil(image_tool, tmp_path):
    photo = np.clip(smooth(45, 67).astype(int) + RNG.integers(-20, 21, (45, 67, 3)), 0, 255).astype(np.uint8)
    for subsampling in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
        for progressive in (False, True):
            path = tmp_path / f"s{subsampling}_p{int(progressive)}.jpg"
            Image.fromarray(photo).save(path, quality=85, subsampling=subsampling, progressive=progressive)
            assert_same_decode(image_tool, path)
    Image.fromarray(photo[..., 1]).save(tmp_path / "grey.jpg", quality=80)
    assert_same_decode(image_tool, tmp_path / "grey.jpg")
    assert probe(image_tool, tmp_path / "grey.jpg") == {"width": 67, "height": 45, "has_alpha": False,
                                                       "format": "jpeg"}


def strip_adobe_marker(data: bytes) -> bytes:
    pos = 2
    while data[pos] == 0xFF and data[pos + 1] != 0xDA:
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if data[pos + 1] == 0xEE:  # APP14 "Adobe"
            return data[:pos] + data[pos + 2 + length:]
        pos += 2 + length
    raise AssertionError("no Adobe marker")


def test_cmyk_jpeg_conversion(image_tool, tmp_path):
    cmyk = Image.fromarray(noise(24, 40, 4), "CMYK")
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=90)  # Pillow writes Adobe's inverted CMYK with the APP14 marker
    assert_same_decode(image_tool, path)
    # Without the marker Pillow still inverts; we take the stored values as ink amounts, so our result
    # is Pillow's CMYK -> RGB formula applied to the inverse of what Pillow reads.
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(strip_adobe_marker(path.read_bytes()))
    stored = 255 - np.asarray(Image.open(plain)).astype(np.int64)  # Pillow's CMYK;I undone
    k = 255 - stored[..., 3:]
    t = stored[..., :3] * k + 128
    expected = k - (((t >> 8) + t) >> 8)
    assert np.array_equal(decode(image_tool, plain), expected.astype(np.uint8))


def test_webp_decode_matches_pil(image_tool, tmp_path):
    rgb, rgba = smooth(30, 41), noise(30, 41, 4)
    Image.fromarray(rgb).save(tmp_path / "lossless.webp", lossless=True)
    Image.fromarray(rgba).save(tmp_path / "lossless_alpha.webp", lossless=True, exact=True)
    Image.fromarray(rgb).save(tmp_path / "lossy.webp", quality=70)
    Image.fromarray(rgba).save(tmp_path / "lossy_alpha.webp", quality=70)
    for path in sorted(tmp_path.glob("*.webp")):
        for alpha in (False, True):
            assert_same_decode(image_tool, path, alpha)
    assert np.array_equal(decode(image_tool, tmp_path / "lossless_alpha.webp", alpha=True), rgba)
    assert probe(image_tool, tmp_path / "lossy_alpha.webp")["has_alpha"]


def test_bmp_decode_matches_pil(image_tool, tmp_path):
    rgb = noise(7, 13)
    for mode in ("1", "L", "P", "RGB"):
        Image.fromarray(rgb).convert(mode).save(tmp_path / f"pil_{mode}.bmp")
    h, w = rgb.shape[:2]
    bgr = [rgb[y, :, ::-1].tobytes() for y in range(h)]
    write_bmp(tmp_path / "top_down.bmp", bgr, w, h, 24, top_down=True)
    r5, g5, b5 = (rgb.astype(np.uint16) >> 3).transpose(2, 0, 1)
    p555 = [((r5[y] << 10) | (g5[y] << 5) | b5[y]).astype("<u2").tobytes() for y in range(h)]
    write_bmp(tmp_path / "rgb555.bmp", p555, w, h, 16)
    g6 = rgb[..., 1].astype(np.uint16) >> 2
    p565 = [((r5[y] << 11) | (g6[y] << 5) | b5[y]).astype("<u2").tobytes() for y in range(h)]
    write_bmp(tmp_path / "rgb565.bmp", p565, w, h, 16, masks=(0xF800, 0x7E0, 0x1F, 0))
    rgba = noise(7, 13, 4)
    bgra = [rgba[y][:, [2, 1, 0, 3]].tobytes() for y in range(h)]
    write_bmp(tmp_path / "bgra_v4.bmp", bgra, w, h, 32, top_down=True,
              masks=(0xFF0000, 0xFF00, 0xFF, 0xFF000000))
    for path in sorted(tmp_path.glob("*.bmp")):
        for alpha in (False, True):
            assert_same_decode(image_tool, path, alpha)
    assert np.array_equal(decode(image_tool, tmp_path / "bgra_v4.bmp", alpha=True), rgba)


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_exif_orientation_matches_pil(image_tool, tmp_path, fmt):
    image = Image.fromarray(smooth(24, 40))  # landscape, no symmetry
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.{fmt}"
        image.save(path, format=fmt.upper(), exif=exif, **({"lossless": True} if fmt == "webp" else {}))
        assert_same_decode(image_tool, path)
        ref = ImageOps.exif_transpose(Image.open(path))
        info = probe(image_tool, path)
        assert (info["width"], info["height"]) == ref.size, orientation


def opencv_area(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """OpenCV's area filter: cv2.resize(..., interpolation=cv2.INTER_AREA), on the uint8 pixels for RGB;
    for RGBA on float64 premultiplied colour (OpenCV resizes each channel on its own, so the
    premultiplication that keeps transparent colours from bleeding, ours and Pillow's, is done around
    it), then unpremultiplied and rounded half up as we do."""
    if a.shape[2] == 3:
        return cv2.resize(a, (w, h), interpolation=cv2.INTER_AREA)
    f = a.astype(np.float64)
    f[..., :3] *= f[..., 3:] / 255
    out = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
    alpha = out[..., 3:]
    out[..., :3] = np.where(alpha > 0, out[..., :3] * 255 / np.maximum(alpha, 1e-9), 0)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def max_diff(a, b):
    assert a.shape == b.shape
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_resize_matches_pil(image_tool, tmp_path):
    for name, pixels in (("noise", noise(60, 90)), ("smooth", smooth(60, 90))):
        path = tmp_path / f"{name}.png"
        Image.fromarray(pixels).save(path)
        im = Image.open(path)
        for factor in (2, 3):  # integer shrink: Pillow's reduce is an exact box, and so is OpenCV's area
            ours = resize(image_tool, path, 90 // factor, 60 // factor)
            assert max_diff(ours, np.asarray(im.reduce(factor))) <= 1
            assert max_diff(ours, opencv_area(pixels, 90 // factor, 60 // factor)) == 0, (name, factor)
        for w, h in ((37, 23), (64, 59), (89, 31), (46, 30)):  # fractional shrink
            ours, ref = resize(image_tool, path, w, h), opencv_area(pixels, w, h)
            assert max_diff(ours, ref) <= 1 and np.mean(ours != ref) <= 0.01, (name, w, h, np.mean(ours != ref))
        for w, h in ((200, 150), (91, 61), (300, 61)):  # growth: Lanczos-3
            assert max_diff(resize(image_tool, path, w, h), np.asarray(im.resize((w, h), Image.LANCZOS))) <= 1
        # Mixed: area across, Lanczos down (area first, as our horizontal pass is first).
        across = Image.fromarray(opencv_area(pixels, 40, 60))
        assert max_diff(resize(image_tool, path, 40, 150), np.asarray(across.resize((40, 150), Image.LANCZOS))) <= 2
    # RGBA, premultiplied on both sides.
    rgba = noise(60, 90, 4)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    im = Image.open(path)

    def premultiplied(a):
        return a[..., :3].astype(np.float64) * a[..., 3:] / 255

    for (w, h), ref in (((45, 30), im.reduce(2)), ((200, 150), im.resize((200, 150), Image.LANCZOS))):
        ours, ref = resize(image_tool, path, w, h, alpha=True), np.asarray(ref)
        assert max_diff(ours[..., 3], ref[..., 3]) <= 1
        assert np.abs(premultiplied(ours) - premultiplied(ref)).max() <= 3
    assert max_diff(resize(image_tool, path, 37, 23, alpha=True), opencv_area(rgba, 37, 23)) <= 1


def test_png_text_with_pil(image_tool, tmp_path):
    src = tmp_path / "src.png"
    rgba = noise(9, 14, 4)
    Image.fromarray(rgba).save(src)
    out = tmp_path / "sample.png"
    prompt = "a photo of sks dog, café ☕ 犬"
    run([image_tool, "save-png", src, out, "prompt", prompt, "seed", "42", "step", "100"])
    saved = Image.open(out)
    assert saved.text == {"prompt": prompt, "seed": "42", "step": "100"}
    assert np.array_equal(np.asarray(saved), rgba)
    # Our reader on Pillow's chunks: tEXt (Latin-1), zTXt, iTXt (UTF-8, compressed and not).
    info = PngImagePlugin.PngInfo()
    info.add_text("latin", "naïve")
    info.add_text("zipped", "compressed " * 50, zip=True)
    info.add_itxt("utf8", "日本語", zip=False)
    info.add_itxt("utf8zip", "日本語 " * 40, zip=True)
    pil_png = tmp_path / "pil.png"
    Image.fromarray(rgba).save(pil_png, pnginfo=info)
    assert json.loads(run([image_tool, "text", pil_png]).stdout) == [
        ["latin", "naïve"], ["zipped", "compressed " * 50], ["utf8", "日本語"], ["utf8zip", "日本語 " * 40]]


def test_bad_files_fail_like_pil(image_tool, tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(noise(64, 64)).save(good, quality=90)
    data = good.read_bytes()
    cases = {"truncated.jpg": (data[:len(data) // 2], "truncated JPEG"),
             "empty.png": (b"", "empty (0 bytes)"),
             "garbage.webp": (bytes(RNG.integers(0, 256, 500, dtype=np.uint8)), "not an image file")}
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = run([image_tool, "decode", path, tmp_path / "x.raw"], check=False)
        assert result.returncode == 1 and str(path) in result.stderr and problem in result.stderr, result.stderr
        with pytest.raises(OSError):  # Pillow refuses these files too
            Image.open(path).load()
