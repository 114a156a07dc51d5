"""The one check of a caller's identity-provider token, for logins and SQL API calls."""

from __future__ import annotations

from dataclasses import replace

from hoopgw.addons.flowstate import Caller, FlowState
from hoopgw.addons.identity import Grant, Identity, IdentityError, IdentityUnavailable, groups_from

NOT_CONFIGURED = "identity is not configured on this gateway (hoopgw_oidc_issuer is unset)"


class CallerCheck:
    """Verifies a token, names the caller on the flow's state, chooses the role and the user."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    @property
    def configured(self) -> bool:
        return self.identity.verifier is not None

    async def grant(self, state: FlowState, token: str, requested_role: str | None) -> Grant:
        """The caller's grant; raises IdentityError whose message is the refusal reason.

        `state.caller` is set as soon as the token is verified, so that a caller
        the policy refuses is on record too; it gets the chosen role once granted.
        """
        verifier = self.identity.verifier
        if verifier is None:
            raise IdentityError(NOT_CONFIGURED)
        try:
            verified = await verifier.verify(token)
            groups = groups_from(verified.claims, self.identity.groups_claim)
            caller = Caller(verified.subject, verified.email, groups, None, verifier.issuer)
            state.caller = caller
            grant = self.identity.policy.decide(groups, requested_role)
            if self.identity.user_map:
                user = self.identity.user_map.user_for(verified.claims, grant.groups)
                grant = replace(grant, upstream_user=user)
        except IdentityUnavailable as exc:
            raise IdentityError(f"the token cannot be verified now: {exc}") from None
        state.caller = replace(caller, role=grant.role)
        return grant
