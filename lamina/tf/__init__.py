"""TensorFlow (Keras 3) twins of lamina's MobileBERT classes, their weight files and TFLite export.

    from lamina import TFMobileBertForSequenceClassification
    model = TFMobileBertForSequenceClassification.from_pretrained("dir")  # tf_model.h5 or model.safetensors
    model.save_pretrained("out")                             # model.safetensors, PyTorch names
    model.save_pretrained("out", safe_serialization=False)   # tf_model.h5, transformers' TF layout

    from lamina.tf.export import export_tflite
    export_tflite(model, "model.tflite", sequence_length=128, quantize="dynamic_int8")

or `lamina export DIR --format tflite --task question_answering`.

TensorFlow is an optional extra: `pip install 'lamina[tf]'`. Importing a module here that needs
it raises `UnsupportedError` naming the extra when it is missing; `lamina.tf.h5` (the
`tf_model.h5` reader and writer) needs only h5py, and `lamina.tf.cli` nothing until it runs.
"""
