"""Pure builders of the lesion's DICOM Segmentation (BINARY, one segment "Lesion").

One SEG instance per analysed frame of a multi-frame source, one for a still image:
highdicom 0.28 refuses a SEG of several frames of a source without a Frame of Reference
UID ("Only a single frame is supported when the source image has no Frame of Reference
UID", highdicom issue #284), and ultrasound cine files have none (every ultrasound file
of pydicom-data lacks it); for a (non-enhanced) Ultrasound Multi-frame source it even fails
looking for functional groups the IOD does not have. So for a cine each analysed frame gets
its own single-frame SEG, built by highdicom from a one-frame view of the header (Number of
Frames 1, SOP Class Ultrasound Image Storage, the single-frame class of the same modality;
also for the retired 1993 ultrasound classes); then the references to the source get the
real SOP Class UID back and the Derivation Image item names the real frame (Referenced
Frame Number: Type 1C, required for a multi-frame source), and the result is re-read with
highdicom so the returned object indexes it the way viewers (OHIF maps SEG frames to source
frames through exactly this reference) and `highdicom.seg.segread` will. The SEGs of one
job share one series.

Every frame is kept, also an empty one (`omit_empty_frames=False`): an analysed frame with
no lesion is then a SEG saying "looked, no lesion pixels", not a missing file.

Codes: segmented property category SCT 49755003 "Morphologically abnormal structure" and
type SCT 4147007 "Mass" (DICOM CID 7150 / CID 7159, the lesion codes highdicom's and
dcmqi's examples use; "mass" is the BI-RADS ultrasound lexicon's term for what the model
segments), anatomic region SCT 76752008 "Breast"; algorithm family DCM 123110 "Artificial
Intelligence" (CID 7162).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from appliance.dicom_out.errors import DicomOutError
from appliance.dicom_out.source import DeviceInfo, FrameResult, n_frames, pad_to_stored

ALGORITHM_NAME = "FAME Node MAU-Net"
SEG_SERIES_NUMBER = 9901  # far above a scanner's own series numbers, so it sorts last
SEGMENT_LABEL = "Lesion"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
# The 1993 ultrasound classes (retired, still written by old scanners: pydicom-data's
# color-pl.dcm): highdicom has no IOD table for them (KeyError on the class UID), so they
# are built through the same view as a cine, their references keeping the real class.
RETIRED_US_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3"})


def segment_description(model_version: str) -> hd.seg.SegmentDescription:
    """The one segment: a breast mass, segmented automatically by the node's model."""
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.cid7150.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.cid7159.Mass,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(model_version),
        anatomic_regions=[codes.SCT.Breast],
    )


def algorithm_identification(model_version: str) -> hd.AlgorithmIdentificationSequence:
    if not model_version.strip():
        raise DicomOutError("model_version is empty: a SEG must name the model that made it")
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        version=model_version,
        family=codes.cid7162.ArtificialIntelligence,
        source="FAME Node",
    )


def build_seg(
    source: Dataset,
    frame_index: int,
    mask: NDArray[np.uint8],
    *,
    crop: tuple[int, int, int, int] | None,
    model_version: str,
    device: DeviceInfo,
    series_instance_uid: str | None = None,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """The SEG of one analysed frame (`frame_index`, 0-based in the file) of `source`.

    `source` is the header from `read_source`; `mask` is in the cropped geometry (`crop`,
    as in `ImageMeta.crop`) and is padded back to the stored Rows x Columns.

    Raises:
        DicomOutError: the frame is not in the file, the mask does not fit the crop, or
            highdicom refuses the source (its message is kept in `reason`).
    """
    total = n_frames(source)
    if not 0 <= frame_index < total:
        raise DicomOutError(
            f"frame_index {frame_index} is not a frame of the source, which has {total} "
            f"frame(s) (0-based indices 0..{total - 1})"
        )
    full = pad_to_stored(mask, crop, int(source.Rows), int(source.Columns))
    needs_view = total > 1 or str(source.SOPClassUID) in RETIRED_US_CLASSES
    view = source
    if needs_view:
        view = copy.deepcopy(source)  # a shallow copy would share (and change) the elements
        if total > 1:
            view.NumberOfFrames = 1
        view.SOPClassUID = US_IMAGE_STORAGE
    try:
        with quiet_names():
            seg = hd.seg.Segmentation(
                source_images=[view],
                pixel_array=full,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[segment_description(model_version)],
                series_instance_uid=series_instance_uid or hd.UID(),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=instance_number,
                manufacturer=device.manufacturer,
                manufacturer_model_name=device.model_name,
                software_versions=device.software_version,
                device_serial_number=device.serial_number,
                omit_empty_frames=False,
                content_label="LESION_AI",
                content_description="AI lesion segmentation, unverified: for clinician review",
                series_description="FAME Node AI lesion segmentation (unverified)",
                institution_name=device.institution_name,
            )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutError(
            f"highdicom refuses a SEG of this {source.SOPClassUID.name} source "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if needs_view:
        seg = _restore_references(seg, source, frame_index + 1 if total > 1 else None)
    return seg


def build_segs(
    source: Dataset,
    frames: Sequence[FrameResult],
    *,
    crop: tuple[int, int, int, int] | None,
    model_version: str,
    device: DeviceInfo,
) -> list[hd.seg.Segmentation]:
    """One SEG per analysed frame, all in one new series, in frame order.

    Raises:
        DicomOutError: no frames, a frame twice, or any frame's `build_seg` refusal.
    """
    if not frames:
        raise DicomOutError("no analysed frames were given: nothing to segment")
    indices = [f.frame_index for f in frames]
    if len(set(indices)) != len(indices):
        raise DicomOutError(f"frame indices must be distinct, got {indices}")
    if n_frames(source) == 1 and len(frames) > 1:
        raise DicomOutError(f"the source is a single frame but {len(frames)} results given")
    series = hd.UID()
    return [
        build_seg(
            source,
            f.frame_index,
            f.mask,
            crop=crop,
            model_version=model_version,
            device=device,
            series_instance_uid=series,
            instance_number=i,
        )
        for i, f in enumerate(sorted(frames, key=lambda f: f.frame_index), start=1)
    ]


@contextlib.contextmanager
def quiet_names() -> Iterator[None]:
    """Silence highdicom's warning that a copied Patient Name has one component
    ("Anonymized"): the name is the source's, copied as it is, and the warning would
    repeat for every job of that scanner."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".*unlikely to represent the intended person name",
            category=UserWarning,
        )
        yield


def _restore_references(
    seg: hd.seg.Segmentation, source: Dataset, frame_number: int | None
) -> hd.seg.Segmentation:
    """`seg` (one frame, built from the view) with its references to `source` made true:
    the source's SOP Class UID, and its derivation naming `frame_number` (1-based) of a
    multi-frame source."""
    _restore_class(seg, str(source.SOPInstanceUID), str(source.SOPClassUID))
    if frame_number is not None:
        item = seg.PerFrameFunctionalGroupsSequence[0]
        for derivation in item.DerivationImageSequence:
            for src in derivation.SourceImageSequence:
                src.ReferencedFrameNumber = frame_number
    # Re-read so the object's frame index (used by get_pixels_by_source_frame) sees it.
    return hd.seg.Segmentation.from_dataset(seg, copy=False)


def _restore_class(ds: Dataset, instance_uid: str, class_uid: str) -> None:
    """Set ReferencedSOPClassUID to `class_uid` in every item, at any depth, that
    references `instance_uid` (highdicom copied the view's class into them)."""
    for element in ds:
        if element.VR != "SQ":
            continue
        for item in element.value:
            if str(item.get("ReferencedSOPInstanceUID", "")) == instance_uid:
                item.ReferencedSOPClassUID = class_uid
            _restore_class(item, instance_uid, class_uid)
