"""Every activity the worker registers, listed in one place."""

from __future__ import annotations

from dataclasses import dataclass

from activities.consent import ConsentActivities
from activities.crm import CrmActivities
from activities.lead import LeadActivities
from activities.reply_notices import ReplyNoticeActivities
from activities.sales import SalesActivities
from activities.training import TrainingActivities


@dataclass(frozen=True)
class Activities:
    """The lead's activities (enrollments, sends, scoring), the handoff's (assignment,
    notices, answers, recycling), replies forwarded to the lead's owner, the CRM sync's,
    weekly retraining's and double opt-in's, built with the same database, channels and
    links."""

    lead: LeadActivities
    sales: SalesActivities
    crm: CrmActivities
    training: TrainingActivities
    consent: ConsentActivities  # double opt-in: the confirmation email, its expiry
    replies: ReplyNoticeActivities  # a lead's reply forwarded to its owner

    def all(self) -> list:
        lead, sales = self.lead, self.sales
        return [
            lead.start_enrollment,
            lead.assign_arm,
            lead.finish_enrollment,
            lead.migrate_enrollment,
            lead.send_message,
            lead.score_lead,
            lead.record_score,  # only workflows started before the score card call it
            lead.hand_off,
            sales.assign_handoff,
            sales.notify_rep,
            self.replies.forward_reply,
            sales.handle_sla_lapse,
            sales.answer_handoff,
            sales.recycle_lead,
            sales.apply_outcome,
            self.crm.sync_hubspot_deals,
            self.training.train_candidate,
            self.consent.send_confirmation,
            self.consent.expire_confirmation,
        ]

    def local(self) -> list:
        """What the lead workflow runs as local activities, on the worker holding it: a
        worker that runs workflows but no activities must still register these."""
        lead = self.lead
        return [lead.start_enrollment, lead.finish_enrollment, lead.score_lead,
                self.sales.apply_outcome]  # fmt: skip
