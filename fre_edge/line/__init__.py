"""The inspection station (``fre-edge line``, torch-free; needs the ``line`` extra for MQTT, OPC UA and cameras).

Pictures come from sources (:mod:`.sources`: a watched folder, a camera or video through OpenCV, pictures
pushed over HTTP), the bundle's runtime scores them (:mod:`.station`), each verdict is written to the
journal on disk (:mod:`.journal`) and every sink (:mod:`.sinks`: MQTT, OPC UA, a webhook, a folder)
delivers it from there in order, at its own pace, retrying while its peer is away.
"""
