"""acme-elements: a stand-in third-party plugin that contributes the element acme.services.HelloSvc."""
