"""openWakeWord's own scores for WAV files, to hold voxd's detector against.

Usage: openwakeword_scores.py MELSPECTROGRAM.onnx EMBEDDING.onnx CLASSIFIER.onnx FILE.wav...
Prints, per 80 ms step, like `voxd wake-score --steps`: file, wake word, end of the step
in seconds from the start of the file, score. Each file is scored by the reference
package's `Model.predict_clip` (1 s of silence around it), on ONNX Runtime.
"""
import sys
import types

# openWakeWord's package imports its verifier trainer (scikit-learn, scipy) when it is
# imported; the scores do not use it, so a stand-in keeps those out of the test set-up.
verifier = types.ModuleType("openwakeword.custom_verifier_model")
verifier.train_custom_verifier = None
sys.modules["openwakeword.custom_verifier_model"] = verifier

from openwakeword.model import Model  # noqa: E402

melspectrogram, embedding, classifier, *files = sys.argv[1:]
for path in files:
    # A model per file: `reset` clears the scores but not the audio features.
    model = Model(
        wakeword_models=[classifier],
        inference_framework="onnx",
        melspec_model_path=melspectrogram,
        embedding_model_path=embedding,
    )
    for i, scores in enumerate(model.predict_clip(path, padding=1)):
        for word, score in scores.items():
            # Step i ends (i + 1) * 1280 samples into the padded clip, 1 s before the file.
            print(f"{path}\t{word}\t{(i + 1) * 1280 / 16000 - 1:.2f}\t{score:.4f}")
