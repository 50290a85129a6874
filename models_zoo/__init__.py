"""models_zoo (imported as audit.models_zoo): reference watermarked models built by code.

Modules: ``architectures`` (DigitsCNN, MnistNet, MnistPlusNet, CifarNet), ``watermarks``
(Zhang content / noise / unrelated and Adi trigger sets), ``datasets`` (clean data),
``train`` (training, ONNX export, onnxruntime evaluation), ``build`` (``build_entry``,
``build_zoo``), ``wide`` (the wide zoo: randomised watermarked models with vanilla twins,
``make_draw`` / ``draws`` / ``build_draw``; its marks in ``wide_marks``, its architectures in
``wide_nets``) and ``cli`` (the ``audit zoo build`` command). Nothing heavy is imported here.
"""
