"""Chat messages in the OpenAI shape, written short in tests: U("hi"), A("hello"), S("be brief")."""


def U(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def A(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def S(text: str) -> dict[str, str]:
    return {"role": "system", "content": text}


# One valid `messages` row: the data of tests whose job never reads it (launch checks data before a run).
ONE_ROW = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
