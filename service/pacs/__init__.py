"""PACS integration. Studies in: the durable study store (``store``), what it accepts
(``instances``), the C-STORE listener (``listener``, ``headct listen``) and the worker that triages
stored studies (``worker``); STOW-RS and the study queries are routes of the gateway
(``service.api.routes``). Results out: the DICOM SR and key image (``outputs``) and their delivery
to PACS destinations (``delivery``)."""
