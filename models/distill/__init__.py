"""Task-specific training: fine-tune a teacher, distill it into a smaller student.

This subpackage imports torch and transformers (lazily, inside its modules); the runtime and the
server never import it, so the serving install stays free of both. Entry points:
``distilserve.models.distill.cli.run(Settings(...))``, ``python -m distilserve distill``, and
``distilserve distill``.
"""
