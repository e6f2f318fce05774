"""The web service: FastAPI app, predictor service, history store and the web page."""
