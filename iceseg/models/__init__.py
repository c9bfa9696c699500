"""The copyable model files: each imports only torch and the standard library, and works copied alone.

``swin.py`` (Swin Transformer T/S/B/L), ``sefpn.py`` (IceSegNet's FPN + BN + ReLU neck), ``uper.py``
(UPerHead, UPerSCA-MTL, FCN auxiliary head), ``knet.py`` (K-Net kernel-update heads), ``unetpp.py``
(U-Net++ ResNet34), ``deeplab.py`` (multi-task DeepLab for AutoICE). ``iceseg.segmentor`` composes them.
"""
