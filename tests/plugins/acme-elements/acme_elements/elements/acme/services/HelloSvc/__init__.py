from elements.services.NormalType import NormalService


class HelloSvc(NormalService):
    """Says hello."""

    def hello(self, name: str) -> dict:
        return {"greeting": f"Hello, {name}!", "from": "acme"}
