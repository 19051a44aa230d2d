"""The hostile-input corpus of issue 8: every kind, what it is, and the answer expected.

Built at test time in a staging folder (seconds, nothing committed, nothing copied from
../shared/data except, where present, a few BUSI test images read from there), then moved
into the live node's inbox interleaved with good files. Answers: ``done``, ``rejected``,
``duplicate`` (of the file named), ``absent`` (no job: ignored by design) -- ``failed`` is
never acceptable. "good" files must also be done within the test's time bound.

| kind                   | what it is                                               | expected   |
| ---------------------- | -------------------------------------------------------- | ---------- |
| zero_bytes             | an empty .dcm                                            | rejected   |
| one_byte               | one byte named .png                                      | rejected   |
| random_dcm             | 8 KiB of random bytes named .dcm                         | rejected   |
| text_png               | a text note named .png                                   | rejected   |
| html                   | an HTML page named .jpg                                  | rejected   |
| zip                    | a ZIP archive (holding a PNG) named .dcm                 | rejected   |
| pdf                    | a one-page PDF named .png                                | rejected   |
| elf                    | a copy of /bin/true named .dcm                           | rejected   |
| gif                    | a real GIF of an ultrasound frame                        | rejected   |
| tiff                   | a real deflate TIFF of an ultrasound frame               | rejected   |
| png_truncated          | a real PNG cut to 60 %                                   | rejected   |
| png_bad_crc            | a real PNG whose IDAT CRC is wrong                       | rejected   |
| png_huge_header        | IHDR claims 100000 x 100000, tiny IDAT                   | rejected   |
| png_1x1                | a 1 x 1 image                                            | rejected   |
| png_1x500              | a 1 x 500 image                                          | rejected   |
| png_5x500              | a 5 x 500 image                                          | rejected   |
| png_blank              | 480 x 640, one grey level                                | rejected   |
| png_blank_noise        | 480 x 640, one grey level +-1 of noise                   | rejected   |
| png_metadata_bomb      | good pixels + iCCP and zTXt inflating to 512 MiB each    | answered   |
| png_16bit              | a 16-bit greyscale ultrasound frame                      | done, good |
| png_palette            | a palette (P) ultrasound frame                           | done, good |
| png_alpha              | a grey + alpha ultrasound frame                          | done, good |
| jpeg_truncated         | a baseline JPEG cut to 50 %                              | rejected   |
| jpeg_scan_bomb         | 2000 x 2000 progressive JPEG, one scan repeated 4000 x   | rejected   |
| jpeg_cmyk              | a CMYK JPEG of an ultrasound frame                       | answered   |
| bmp_absurd_header      | BMP header claiming 1e6 x 1e6 x 24 bit, 64 bytes of data | rejected   |
| dicom_trunc_header     | a US DICOM cut inside its file meta (300 bytes)          | rejected   |
| dicom_trunc_pixels     | a US DICOM cut inside its pixel data                     | rejected   |
| dicom_mr               | an MR DICOM (other modality)                             | rejected   |
| dicom_sr               | a Basic Text SR, no pixel data                           | rejected   |
| dicom_no_preamble      | a US instance as a bare implicit-VR data set             | done, good |
| dicom_65535            | Rows = Columns = 65535 in the header, 64 bytes of pixels | rejected   |
| dicom_rows_zero        | Rows = 0                                                 | rejected   |
| dicom_deflate_bomb     | deflated data set, ~1 MB inflating to 1 GiB of pixels    | rejected   |
| dicom_nan_region       | US region PhysicalDeltaX = NaN, DeltaY = +Inf            | done, good |
| dicom_nan_spacing      | Pixel Spacing "NaN\\Infinity", no region                 | done, good |
| sparse_2gib            | a 2 GiB sparse file named .dcm (limit: 1 GiB)            | rejected   |
| fifo                   | a named pipe named .dcm (no writer)                      | rejected   |
| unix_socket            | a unix socket named .dcm                                 | rejected   |
| symlink_key            | a symlink to the node's own work/pseudonym.key           | rejected   |
| symlink_passwd         | a symlink to /etc/passwd                                 | rejected   |
| symlink_dangling       | a symlink to nothing                                     | rejected   |
| symlink_loop           | two symlinks pointing at each other                      | rejected   |
| folder_named_dcm       | a folder named x.dcm; inside it a good PNG (done, good)  | absent (1) |
| name_newline           | a good PNG whose name holds a newline                    | done, good |
| name_ansi              | a good PNG whose name holds ESC [31m                     | done, good |
| name_non_utf8          | a good PNG named b"caf\\xe9...png"                       | done, good |
| patient_name           | DOE^JANE_MRN123456.dcm, a good US DICOM of that patient  | done, good |
| hidden                 | a good PNG named .hidden...                              | absent     |
| part                   | a good PNG named ....png.part                            | absent     |
| resend                 | a good DICOM again under another name                    | duplicate  |
| resend_rle             | pydicom-data OBXXXX1A_rle.dcm: OBXXXX1A in RLE lossless  | duplicate  |
| resend_implicit        | a good DICOM re-encoded implicit VR, same UIDs, pixels   | duplicate  |
| uid_conflict           | another patient's image with a good file's SOP UID       | done (2)   |
| replaced_while_queued  | a PNG renamed over by another while its job is queued    | done (3)   |
| slow_writer            | a PNG appended in 4 pieces 1.5 s apart, one cut at IEND  | done (4)   |

(1) the folder itself: no job, or rejected; the PNG inside it is a good file. (2) with its
own results, never the first image's, and flagged as a conflict. (3) both contents done,
each analysed as itself. (4) exactly one done job, for the final content; partial states
rejected or not taken.

Good files mixed in: the pydicom-data ultrasound files with distinct SOP Instance UIDs,
PNGs of their frames, calibrated phantom DICOMs and PNGs, and up to 6 BUSI test images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from appliance.phantom import PhantomSpec, make_phantom
from tests.e2e.badfiles import (
    dicom_without_pixels,
    png_claiming_size,
    sparse_file,
    unix_socket_file,
)
from tests.e2e.hostile import dicoms, images

DONE = frozenset({"done"})
REJECTED = frozenset({"rejected"})
DUPLICATE = frozenset({"duplicate"})
ANSWERED = frozenset({"done", "rejected"})
ABSENT = frozenset({"absent"})
ABSENT_OR_REJECTED = frozenset({"absent", "rejected"})

# pydicom-data ultrasound files with pairwise distinct SOP Instance UIDs (good files).
GOOD_SAMPLES = (
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "OBXXXX1A.dcm",
    "US1_J2KR.dcm",
    "US1_UNCR.dcm",
    "US1_J2KI.dcm",
    "color-pl.dcm",
    "color3d_jpeg_baseline.dcm",
    "gdcm-US-ALOKA-16.dcm",
)


@dataclass(frozen=True)
class Entry:
    """One thing put into the inbox. `rel` is its path below the inbox, as bytes (names
    need not be UTF-8); `original` names the entry a duplicate repeats."""

    rel: bytes
    kind: str
    expect: frozenset[str]
    good: bool = False
    original: bytes | None = None

    @property
    def label(self) -> str:
        return ascii(os.fsdecode(self.rel))[1:-1]


@dataclass
class Corpus:
    staging: Path
    entries: list[Entry] = field(default_factory=list)
    # Bytes that must never show up in a reason, the log or quarantine (symlink targets).
    secrets: dict[str, bytes] = field(default_factory=dict)
    # Dynamic kinds, written by the test while the node runs.
    replaced: tuple[bytes, bytes, bytes] = (b"", b"", b"")  # name, first, second content
    slow: tuple[bytes, bytes] = (b"", b"")  # name, final content

    def kinds(self) -> set[str]:
        return {e.kind for e in self.entries} | {"replaced_while_queued", "slow_writer"}


@dataclass(frozen=True)
class Sources:
    samples: dict[str, Path]  # pydicom-data ultrasound files by name
    mr: Path
    busi: list[Path]
    key_file: Path  # the node's work/pseudonym.key (created by the test before start)


def _phantom(seed: int, height: int = 360, width: int = 480) -> np.ndarray:
    return make_phantom(PhantomSpec(height=height, width=width, seed=seed)).image


def build_corpus(staging: Path, src: Sources) -> Corpus:
    """Write every entry into `staging` (created); returns the corpus, good files included."""
    missing = [n for n in (*GOOD_SAMPLES, "OBXXXX1A_rle.dcm") if n not in src.samples]
    if missing:
        raise FileNotFoundError(f"pydicom-data lacks {missing}: pip install '.[demo]' again")
    staging.mkdir(parents=True)
    c = Corpus(staging)

    def put(
        name: str | bytes,
        kind: str,
        expect: frozenset[str],
        data: bytes | None = None,
        *,
        good: bool = False,
        original: bytes | None = None,
        make: Callable[[Path], object] | None = None,
    ) -> bytes:
        rel = os.fsencode(name)
        path = Path(os.fsdecode(staging / os.fsdecode(rel)))
        if data is not None:
            path.write_bytes(data)
        elif make is not None:
            make(path)
        c.entries.append(Entry(rel, kind, expect, good=good, original=original))
        return rel

    us1 = dicoms.grey_frame(src.samples["US1_UNCR.dcm"])  # 480 x 640
    jll = dicoms.grey_frame(src.samples["JPGLosslessP14SV1_1s_1f_8b.dcm"])  # 768 x 1024

    # --- good files ----------------------------------------------------------------------
    for name in GOOD_SAMPLES:
        put(f"good_{name}", "good_sample", DONE, src.samples[name].read_bytes(), good=True)
    put("good_us1_frame.png", "good_png", DONE, images.png(us1), good=True)
    put("good_jll_frame.png", "good_png", DONE, images.png(jll[64:704, 64:960]), good=True)
    for seed in (201, 202, 203, 204):
        put(f"good_phantom_{seed}.png", "good_png", DONE, images.png(_phantom(seed)), good=True)
    phantom_dcm = put(
        "good_phantom_301.dcm",
        "good_dicom",
        DONE,
        good=True,
        make=lambda p: dicoms.us_phantom(p, 301),
    )
    put(
        "good_phantom_302.dcm",
        "good_dicom",
        DONE,
        good=True,
        make=lambda p: dicoms.us_phantom(p, 302, patient_id="HOSTILE-2"),
    )
    for i, path in enumerate(src.busi[:6]):
        put(f"good_busi_{i}.png", "good_busi", DONE, path.read_bytes(), good=True)
    src_dcm = staging / os.fsdecode(phantom_dcm)

    # --- not images at all ---------------------------------------------------------------
    put("h_zero_bytes.dcm", "zero_bytes", REJECTED, b"")
    put("h_one_byte.png", "one_byte", REJECTED, b"\x89")
    put("h_random.dcm", "random_dcm", REJECTED, np.random.default_rng(7).bytes(8192))
    put("h_text.png", "text_png", REJECTED, b"Dear colleague, please find the scan attached.\n")
    put(
        "h_page.jpg",
        "html",
        REJECTED,
        b"<!DOCTYPE html><html><body><h1>Export failed</h1></body></html>\n",
    )
    put("h_archive.dcm", "zip", REJECTED, images.zip_archive({"scan.png": images.png(us1)}))
    put("h_document.png", "pdf", REJECTED, images.pdf_document("Radiology report"))
    put("h_program.dcm", "elf", REJECTED, Path("/bin/true").read_bytes())
    put("h_frame.gif", "gif", REJECTED, images.gif(us1[:, :600]))
    put("h_frame.tif", "tiff", REJECTED, images.tiff(us1[:, :620]))

    # --- broken or costly images ---------------------------------------------------------
    whole = images.png(us1[:470])
    put("h_png_truncated.png", "png_truncated", REJECTED, whole[: len(whole) * 6 // 10])
    put("h_png_bad_crc.png", "png_bad_crc", REJECTED, images.png_bad_crc(us1[:460]))
    put(
        "h_png_huge_header.png",
        "png_huge_header",
        REJECTED,
        make=lambda p: png_claiming_size(p, 100_000, 100_000),
    )
    put("h_png_1x1.png", "png_1x1", REJECTED, images.png(np.full((1, 1), 128, np.uint8)))
    put("h_png_1x500.png", "png_1x500", REJECTED, images.png(us1[200:201, :500]))
    put("h_png_5x500.png", "png_5x500", REJECTED, images.png(us1[200:205, :500]))
    put("h_png_blank.png", "png_blank", REJECTED, images.png_constant(480, 640, 90))
    put(
        "h_png_blank_noise.png",
        "png_blank_noise",
        REJECTED,
        images.png_constant_noise(480, 640, 90, seed=5),
    )
    put(
        "h_png_metadata_bomb.png",
        "png_metadata_bomb",
        ANSWERED,
        images.png_metadata_bomb(_phantom(401)),
    )
    put("good_png_16bit.png", "png_16bit", DONE, images.png_16bit(_phantom(402)), good=True)
    put("good_png_palette.png", "png_palette", DONE, images.png_palette(_phantom(403)), good=True)
    put("good_png_alpha.png", "png_alpha", DONE, images.png_alpha(_phantom(404)), good=True)
    full_jpeg = images.jpeg(jll)
    put("h_jpeg_truncated.jpg", "jpeg_truncated", REJECTED, full_jpeg[: len(full_jpeg) // 2])
    put("h_jpeg_scan_bomb.jpg", "jpeg_scan_bomb", REJECTED, images.jpeg_scan_bomb())
    put("h_jpeg_cmyk.jpg", "jpeg_cmyk", ANSWERED, images.jpeg_cmyk(jll[:700, :900]))
    put("h_bmp_absurd.bmp", "bmp_absurd_header", REJECTED, images.bmp_absurd_header())

    # --- DICOM ---------------------------------------------------------------------------
    us_bytes = src.samples["US1_UNCR.dcm"].read_bytes()
    put("h_dicom_trunc_header.dcm", "dicom_trunc_header", REJECTED, us_bytes[:300])
    put(
        "h_dicom_trunc_pixels.dcm",
        "dicom_trunc_pixels",
        REJECTED,
        us_bytes[: len(us_bytes) * 2 // 3],
    )
    put("h_dicom_mr.dcm", "dicom_mr", REJECTED, src.mr.read_bytes())
    put("h_dicom_sr.dcm", "dicom_sr", REJECTED, make=dicom_without_pixels)
    put(
        "good_no_preamble.dcm",
        "dicom_no_preamble",
        DONE,
        good=True,
        make=lambda p: dicoms.without_preamble(src_dcm, p),
    )
    put(
        "h_dicom_65535.dcm",
        "dicom_65535",
        REJECTED,
        make=lambda p: dicoms.with_header(src_dcm, p, rows=65535, columns=65535, pixel_bytes=64),
    )
    put(
        "h_dicom_rows_zero.dcm",
        "dicom_rows_zero",
        REJECTED,
        make=lambda p: dicoms.with_header(src_dcm, p, rows=0, columns=480, pixel_bytes=4096),
    )
    put(
        "h_dicom_deflate_bomb.dcm",
        "dicom_deflate_bomb",
        REJECTED,
        make=lambda p: dicoms.deflate_bomb(src_dcm, p),
    )
    put(
        "good_nan_region.dcm",
        "dicom_nan_region",
        DONE,
        good=True,
        make=lambda p: dicoms.with_bad_calibration(src_dcm, p, in_region=True),
    )
    put(
        "good_nan_spacing.dcm",
        "dicom_nan_spacing",
        DONE,
        good=True,
        make=lambda p: dicoms.with_bad_calibration(src_dcm, p, in_region=False),
    )

    # --- not regular files ---------------------------------------------------------------
    c.secrets = {
        "pseudonym.key": src.key_file.read_bytes(),
        "/etc/passwd": Path("/etc/passwd").read_bytes(),
    }
    put("h_sparse_2gib.dcm", "sparse_2gib", REJECTED, make=lambda p: sparse_file(p, 2 << 30))
    put("h_fifo.dcm", "fifo", REJECTED, make=os.mkfifo)
    put("h_socket.dcm", "unix_socket", REJECTED, make=unix_socket_file)
    put("h_link_key.dcm", "symlink_key", REJECTED, make=lambda p: p.symlink_to(src.key_file))
    put("h_link_passwd.png", "symlink_passwd", REJECTED, make=lambda p: p.symlink_to("/etc/passwd"))
    put(
        "h_link_dangling.dcm",
        "symlink_dangling",
        REJECTED,
        make=lambda p: p.symlink_to(staging.parent / "no-such-file.dcm"),
    )
    put("h_loop_a.dcm", "symlink_loop", REJECTED, make=lambda p: p.symlink_to("h_loop_b.dcm"))
    put("h_loop_b.dcm", "symlink_loop", REJECTED, make=lambda p: p.symlink_to("h_loop_a.dcm"))
    put("h_folder.dcm", "folder_named_dcm", ABSENT_OR_REJECTED, make=lambda p: p.mkdir())
    put(
        "h_folder.dcm/good_inner.png",
        "folder_named_dcm",
        DONE,
        images.png(_phantom(501)),
        good=True,
    )

    # --- names ---------------------------------------------------------------------------
    put("good_new\nline.png", "name_newline", DONE, images.png(_phantom(601)), good=True)
    put("good_\x1b[31mred.png", "name_ansi", DONE, images.png(_phantom(602)), good=True)
    put(b"good_caf\xe9.png", "name_non_utf8", DONE, images.png(_phantom(603)), good=True)
    put(
        "DOE^JANE_MRN123456.dcm",
        "patient_name",
        DONE,
        good=True,
        make=lambda p: dicoms.us_phantom(p, 604, patient_id="MRN123456", patient_name="DOE^JANE"),
    )
    put(".hidden_scan.png", "hidden", ABSENT, images.png(_phantom(605)))
    put("scan_in_transfer.png.part", "part", ABSENT, images.png(_phantom(606)))

    # --- identity: re-sends and conflicts (dropped last, after their originals) ---------
    put(
        "h_resend_of_phantom_301.dcm",
        "resend",
        DUPLICATE,
        src_dcm.read_bytes(),
        original=phantom_dcm,
    )
    put(
        "h_resend_OBXXXX1A_rle.dcm",
        "resend_rle",
        DUPLICATE,
        src.samples["OBXXXX1A_rle.dcm"].read_bytes(),
        original=b"good_OBXXXX1A.dcm",
    )
    put(
        "h_resend_implicit.dcm",
        "resend_implicit",
        DUPLICATE,
        original=phantom_dcm,
        make=lambda p: dicoms.other_syntax(src_dcm, p),
    )
    put(
        "h_uid_conflict.dcm",
        "uid_conflict",
        DONE,
        original=phantom_dcm,
        make=lambda p: dicoms.uid_conflict(src_dcm, p, seed=701),
    )

    c.replaced = (
        b"h_replaced.png",
        images.png(_phantom(801)),
        images.png(_phantom(802, height=420, width=560)),
    )
    c.slow = (b"h_slow.png", images.png(_phantom(803, height=380, width=500)))
    return c
