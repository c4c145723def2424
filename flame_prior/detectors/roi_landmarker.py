"""MediaPipe's Face Mesh landmark model run on a region of interest given by the caller, with its
face-presence score: no face detector in front of it.

Why: Face Mesh (``mp.solutions.face_mesh``) first runs its short-range face detector, turns the
detection into a region of interest (the box 1.5 times, rotated so the eyes are level) and runs the
landmark model there; the landmarks are dropped when the model's own face-presence score is below
0.5. On a head turned 60° the detector still finds the face (score 0.76 on the turning-head scan
rig's -60° view) but the region it gives makes the landmark model doubt (presence 0.02), and the
view is lost. A region seeded from a neighbouring view's landmarks gives the model a face it knows
(presence 0.7-0.99 for the same view): :mod:`flame_prior.detectors.seeded`.

The graph is the inside of MediaPipe's ``FaceLandmarkCpu`` subgraph (mediapipe 0.10.9, the model
with attention that ``refine_landmarks=True`` uses: 478 points with the irises), built from the
calculators registered in the wheel, with the presence score as an output instead of a gate.
Everything it loads ships inside the mediapipe wheel.

Region of interest: a square-or-not rectangle in pixels of the image it is applied to, centre
``(cx, cy)``, ``width`` and ``height`` and ``rotation`` (radians, MediaPipe's sign: the rectangle's
x axis turned clockwise on the screen, i.e. towards +y in image rows, by ``rotation``). The image
inside it is resampled (bilinearly) to the model's 192x192 input, so a small face is upsampled and a
large one downsampled by the same step.

Landmarks come back like Face Mesh's: ``(478, 3)`` float64 ``(x * W, y * H, z * W)`` for an image of
``W x H`` pixels (corner origin, pixel centres at +0.5, as everywhere in flame-prior).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

__all__ = ["Roi", "RoiLandmarker"]


@dataclass(frozen=True)
class Roi:
    """A rotated rectangle in pixels (module docstring)."""

    cx: float
    cy: float
    width: float
    height: float
    rotation: float = 0.0

    def mirrored(self, image_width: int) -> Roi:
        """The same rectangle in the horizontally flipped image (``x -> W - x``)."""
        return Roi(image_width - self.cx, self.cy, self.width, self.height, -self.rotation)


_GRAPH = """
input_stream: "image"
input_stream: "roi"
output_stream: "landmarks"
output_stream: "presence"
node { calculator: "ConstantSidePacketCalculator" output_side_packet: "PACKET:with_attention"
  options: { [mediapipe.ConstantSidePacketCalculatorOptions.ext]: { packet { bool_value: true } } } }
node { calculator: "FaceLandmarksModelLoader" input_side_packet: "WITH_ATTENTION:with_attention"
  output_side_packet: "MODEL:model" }
node { calculator: "TfLiteCustomOpResolverCalculator" output_side_packet: "OP_RESOLVER:op_resolver" }
node { calculator: "ImageToTensorCalculator" input_stream: "IMAGE:image" input_stream: "NORM_RECT:roi"
  output_stream: "TENSORS:input_tensors"
  options: { [mediapipe.ImageToTensorCalculatorOptions.ext] {
    output_tensor_width: 192 output_tensor_height: 192 output_tensor_float_range { min: 0.0 max: 1.0 } } } }
node { calculator: "InferenceCalculator" input_stream: "TENSORS:input_tensors" input_side_packet: "MODEL:model"
  input_side_packet: "OP_RESOLVER:op_resolver" output_stream: "TENSORS:output_tensors"
  options: { [mediapipe.InferenceCalculatorOptions.ext] { delegate { xnnpack {} } } } }
node { calculator: "SplitTensorVectorCalculator" input_stream: "output_tensors"
  output_stream: "landmark_tensors" output_stream: "face_flag_tensor"
  options: { [mediapipe.SplitVectorCalculatorOptions.ext] { ranges: { begin: 0 end: 6 } ranges: { begin: 6 end: 7 } } } }
node { calculator: "TensorsToFloatsCalculator" input_stream: "TENSORS:face_flag_tensor" output_stream: "FLOAT:presence"
  options: { [mediapipe.TensorsToFloatsCalculatorOptions.ext] { activation: SIGMOID } } }
node { calculator: "TensorsToFaceLandmarksWithAttention" input_stream: "TENSORS:landmark_tensors"
  output_stream: "LANDMARKS:roi_landmarks" }
node { calculator: "LandmarkProjectionCalculator" input_stream: "NORM_LANDMARKS:roi_landmarks"
  input_stream: "NORM_RECT:roi" output_stream: "NORM_LANDMARKS:landmarks" }
"""


class RoiLandmarker:
    """The landmark model on caller-given regions (module docstring); ``close()`` frees the graph."""

    def __init__(self) -> None:
        import mediapipe
        from google.protobuf import text_format
        from mediapipe.framework import calculator_pb2
        from mediapipe.python._framework_bindings import calculator_graph, resource_util
        from mediapipe.python import packet_getter

        # The model paths in the graph are relative to the folder that holds the mediapipe package
        # (what mp.solutions sets too).
        resource_util.set_resource_dir(os.path.dirname(os.path.dirname(mediapipe.__file__)))
        config = text_format.Parse(_GRAPH, calculator_pb2.CalculatorGraphConfig())
        self._graph = calculator_graph.CalculatorGraph(graph_config=config)
        self._out: dict = {}
        self._graph.observe_output_stream(
            "landmarks", lambda _s, p: self._out.__setitem__("landmarks", packet_getter.get_proto(p)), True)
        self._graph.observe_output_stream(
            "presence", lambda _s, p: self._out.__setitem__("presence", packet_getter.get_float(p)), True)
        self._graph.start_run()
        self._timestamp = 0

    def __call__(self, pixels: np.ndarray, roi: Roi) -> tuple[float, np.ndarray]:
        """The landmark model on ``roi`` of ``pixels`` ``(H, W, 3)`` uint8 RGB.

        Returns:
            ``(presence, points)``: the model's face-presence score in [0, 1] (MediaPipe keeps a face
            at 0.5 or more) and ``(478, 3)`` float64 points ``(x * W, y * H, z * W)``.
        """
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python import packet_creator
        from mediapipe.python._framework_bindings import image_frame

        H, W = pixels.shape[:2]
        rect = rect_pb2.NormalizedRect(x_center=roi.cx / W, y_center=roi.cy / H, width=roi.width / W,
                                       height=roi.height / H, rotation=roi.rotation)
        self._out.clear()
        image = packet_creator.create_image_frame(image_format=image_frame.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(pixels))
        self._graph.add_packet_to_input_stream("image", image.at(self._timestamp))
        self._graph.add_packet_to_input_stream("roi", packet_creator.create_proto(rect).at(self._timestamp))
        self._timestamp += 1
        self._graph.wait_until_idle()
        lm = self._out["landmarks"]
        points = np.array([(p.x, p.y, p.z) for p in lm.landmark], dtype=np.float64) * np.array([W, H, W])
        return float(self._out["presence"]), points

    def close(self) -> None:
        self._graph.close()
