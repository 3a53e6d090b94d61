"""API shapes besides chat completions: each an adapter from its wire form onto the one chat pipeline.

The seam is :class:`unimodel.service.shape.ApiShape`; each shape here is one subpackage (its wire types live in
``unimodel/protocol/``). Shapes import protocol, errors, formats and service, never the server or the settings.
"""
