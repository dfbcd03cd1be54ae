"""Config, file-format round trips in a fresh process, and per-stage feature maps."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tf_keras

import keras_densenet

SHAPE = (8, 8, 3)

# Loads every saved model in a new interpreter, so that nothing registered in this process helps.
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    paths = json.loads(sys.argv[1])
    images = np.load(paths.pop("images"))
    import keras, tf_keras
    import keras_densenet
    for kind, path in paths.items():
        if kind == "keras":
            model = keras.saving.load_model(path)
        elif kind == "savedmodel":
            model = tf_keras.models.load_model(path)
        elif kind == "h5_memory_efficient":
            model = tf_keras.models.load_model(path, custom_objects=keras_densenet.custom_objects())
        else:
            model = tf_keras.models.load_model(path)
        np.save(path + ".npy", np.asarray(model(images, training=False)))
    """
)


def make(module, **kwargs):
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=SHAPE, classes=4, keras_module=module, **kwargs)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.2, w.shape) if "variance" not in w.name else rng.uniform(0.5, 1.5, w.shape)
                       for w in model.weights])
    return model


@pytest.mark.slow
def test_saved_files_reload_in_new_process(tmp_path):
    images = np.random.default_rng(1).uniform(-1, 1, (2,) + SHAPE).astype("float32")
    models = {
        "keras": make(keras, include_preprocessing=True),
        "h5": make(tf_keras, include_preprocessing=True, dropout_rate=0.1, weight_decay=1e-4),
        "savedmodel": make(tf_keras),
        "h5_memory_efficient": make(tf_keras, memory_efficient=True),
    }
    paths = {"images": str(tmp_path / "images.npy")}
    np.save(paths["images"], images)
    for kind, model in models.items():
        path = str(tmp_path / {"keras": "m.keras", "savedmodel": "saved_model"}.get(kind, f"{kind}.h5"))
        model.save(path) if kind != "savedmodel" else model.save(path, save_format="tf")
        paths[kind] = path
    subprocess.run([sys.executable, "-c", LOADER, json.dumps(paths)], check=True, timeout=300)
    for kind, model in models.items():
        expected = np.asarray(model(images, training=False))
        np.testing.assert_array_equal(np.load(paths[kind] + ".npy"), expected, err_msg=kind)


@pytest.mark.parametrize("module", [tf_keras, keras], ids=["tf_keras", "keras3"])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_config_round_trip(module, memory_efficient):
    model = make(module, memory_efficient=memory_efficient)
    restored = module.Model.from_config(model.get_config())
    restored.set_weights(model.get_weights())
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    images = np.random.default_rng(2).uniform(-1, 1, (2,) + SHAPE).astype("float32")
    np.testing.assert_array_equal(np.asarray(restored(images, training=False)), np.asarray(model(images, training=False)))


def test_imagenet_stage_features():
    model = keras_densenet.DenseNet121(include_top=False, input_shape=(224, 224, 3))
    extractor = keras_densenet.feature_extractor(model)
    assert keras_densenet.stage_strides("densenet121") == (4, 8, 16, 32)
    assert keras_densenet.stage_layer_names(model) == ["pool2_relu", "pool3_relu", "pool4_relu", "relu"]
    assert [tuple(shape) for shape in extractor.output_shape] == [
        (None, 56, 56, 256), (None, 28, 28, 512), (None, 14, 14, 1024), (None, 7, 7, 1024)
    ]
    images = np.random.default_rng(3).uniform(-1, 1, (1, 224, 224, 3)).astype("float32")
    last = extractor(images, training=False)[-1].numpy()
    np.testing.assert_allclose(last, model(images, training=False).numpy(), atol=1e-6)


def test_cifar_stage_features_keras3():
    model = keras_densenet.DenseNet("densenet_bc22_k8", input_shape=(32, 32, 3), keras_module=keras)
    extractor = keras_densenet.feature_extractor(model)
    assert isinstance(extractor, keras.Model)
    assert [tuple(output.shape[1:3]) for output in extractor.outputs] == [(32, 32), (16, 16), (8, 8)]
    assert keras_densenet.stage_strides("densenet_bc22_k8") == (1, 2, 4)


def test_feature_extractor_rejects_other_models():
    other = tf_keras.Sequential([tf_keras.layers.Input((4,)), tf_keras.layers.Dense(2, name="dense")], name="plain")
    with pytest.raises(ValueError, match=r"model from keras_densenet.DenseNet.*Received: model='plain'"):
        keras_densenet.feature_extractor(other)
