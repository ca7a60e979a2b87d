"""Text shipped with veilml for offline examples and tests.

``quillfeather_mail.txt``: about 40 KB of made-up internal e-mails, memos and board minutes of a
fictional logistics company, written for veilml. Every person, company, address (``.example``
domains), place and figure in it is invented. Documents are separated by a line holding ``~~~``.
Read it with :func:`veilml.models.lora.load_corpus`.
"""
