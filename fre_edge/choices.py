"""The fitting side's named choices, torch-free, so that the command line can check its options and outputs
and refuse a bad one before torch is imported (seconds on an inspection PC). The modules that implement
each choice import it from here; tests/test_cli_help.py checks that the backbone names match the registry."""

LAYOUTS = ("auto", "mvtec", "magnetic_tile", "folder")  # fre_edge.fit.data
STRATEGIES = ("auto", "gram", "covariance", "autoencoder")  # fre_edge.fit.pca
BACKBONES = ("efficientnet_b5", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18",
             "resnet50", "vgg16", "wide_resnet50_2")  # fre_edge.fit.backbones.REGISTRY
DEFAULT_BACKBONE = "efficientnet_lite0"
HEAD_FORMS = ("auto", "reconstruct", "one_pass")  # fre_edge.fit.model
HEAD_WEIGHTS = ("f32", "int8")  # fre_edge.export.head_weights
DEFAULT_BOUND = 0.01  # largest relative score change an INT8 head may make on the check pictures
