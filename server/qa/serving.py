"""Question-answering logic. Shapes follow the HF pipeline: one input and top_k 1 give one object."""

from __future__ import annotations

from distilserve.models.bundle import Task
from distilserve.models.tasks import QAInput, QAParams
from distilserve.server.admission import RequestContext
from distilserve.server.pipeline import InferencePipeline
from distilserve.server.qa.protocol import AnswerOut, AnswerRequest

TASK: Task = "question-answering"


class AnswerService:
    def __init__(self, pipeline: InferencePipeline) -> None:
        self.pipeline = pipeline

    async def answer(
        self, request: AnswerRequest, context: RequestContext
    ) -> AnswerOut | list[AnswerOut] | list[AnswerOut | list[AnswerOut]]:
        single = not isinstance(request.inputs, list)
        pairs = [request.inputs] if not isinstance(request.inputs, list) else request.inputs
        # The item limits apply to both halves; the context is the one that can be long.
        self.pipeline.check_items([pair.context for pair in pairs], "inputs")
        self.pipeline.check_items([pair.question for pair in pairs], "inputs")
        served = self.pipeline.registry.resolve(request.model, TASK)
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
        outcome = await self.pipeline.run_items(served, items, params, context, param="inputs")
        shaped: list[AnswerOut | list[AnswerOut]] = []
        for answers in outcome.results:
            rendered = [
                AnswerOut.model_construct(
                    answer=answer.answer, score=answer.score, start=answer.start, end=answer.end
                )
                for answer in answers
            ]
            shaped.append(rendered[0] if options.top_k == 1 and rendered else rendered)
        return shaped[0] if single else shaped
