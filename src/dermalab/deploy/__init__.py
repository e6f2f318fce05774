"""Deployment stage: ONNX export, the predictor shared by the CLI and the web service, and the
"not skin" / "not sure" detectors fitted for serving."""
