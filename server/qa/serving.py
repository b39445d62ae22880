"""Question-answering logic. Shapes follow the HF pipeline: one input and top_k 1 give one object."""

from __future__ import annotations

from typing import Any

from models.bundle import Task
from models.tasks import QAInput, QAParams
from server.inference import RequestContext, ServerState
from server.qa.protocol import AnswerRequest

TASK: Task = "question-answering"


class AnswerService:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def answer(self, request: AnswerRequest, context: RequestContext) -> Any:
        single = not isinstance(request.inputs, list)
        pairs = [request.inputs] if not isinstance(request.inputs, list) else request.inputs
        # The item limits apply to both halves; the context is the one that can be long.
        self.state.check_items([pair.context for pair in pairs], "inputs")
        self.state.check_items([pair.question for pair in pairs], "inputs")
        served = self.state.registry.resolve(request.model, TASK)
        options = request.parameters
        params = QAParams(
            top_k=options.top_k,
            doc_stride=options.doc_stride,
            max_answer_len=options.max_answer_len,
            max_question_len=options.max_question_len,
            handle_impossible_answer=options.handle_impossible_answer,
            align_to_words=options.align_to_words,
        )
        items = [QAInput(question=pair.question, context=pair.context) for pair in pairs]
        outcome = await self.state.run_items(served, items, params, context, param="inputs")
        shaped: list[Any] = []
        for answers in outcome.results:
            rendered = [
                {"answer": answer.answer, "score": answer.score, "start": answer.start, "end": answer.end}
                for answer in answers
            ]
            shaped.append(rendered[0] if options.top_k == 1 and rendered else rendered)
        return shaped[0] if single else shaped
