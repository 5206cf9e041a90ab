"""Deployment of fine-tuned models: export to Paddle Inference (`inference.export`), the one prediction
interface (`inference.predictor.QAPredictor`), post-training int8 quantization (`inference.quantize`) and,
built on them, the HTTP answer service (`inference.server`)."""
