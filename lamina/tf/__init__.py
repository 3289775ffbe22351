"""TensorFlow (Keras 3) twins of lamina's MobileBERT classes, their weight files and TFLite export.

TensorFlow is an optional extra: `pip install 'lamina[tf]'`. Importing a module here that needs
it raises `UnsupportedError` naming the extra when it is missing; `lamina.tf.h5` (the
`tf_model.h5` reader and writer) needs only h5py.
"""
