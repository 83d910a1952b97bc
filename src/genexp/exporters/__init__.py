"""What each model family ships as ONNX graphs (calibration data, install), with a default for any model."""
