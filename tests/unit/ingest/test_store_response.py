"""The C-STORE response sent without pynetdicom's dataset: the same command set, the same
P-DATA values."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from gateway.ingest.store_response import encode_store_response, store_response_pdvs

CT = "1.2.840.10008.5.1.4.1.1.2"
UIDS = st.text("0123456789.", min_size=1, max_size=64) | st.sampled_from(
    [CT, "1.2.3 4", "1.2.abc", "1.2\\3", " 1.2"]
)


def _response(
    *, responding_to: int, class_uid: str, instance_uid: str, status: int, comment: str | None
) -> C_STORE:
    """The response primitive pynetdicom's StorageServiceClass.SCP builds."""
    rsp = C_STORE()
    rsp.MessageID = responding_to
    rsp.MessageIDBeingRespondedTo = responding_to
    with warnings.catch_warnings():  # pynetdicom warns of a peer's odd UID, and keeps it
        warnings.simplefilter("ignore")
        rsp.AffectedSOPClassUID = class_uid
        rsp.AffectedSOPInstanceUID = instance_uid
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    return rsp


def _pynetdicoms(rsp: C_STORE, max_pdu: int) -> tuple[bytes, list[bytes]]:
    """What pynetdicom's send_msg encodes: the command set, and each P-DATA's values."""
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    command_set = encode(message.command_set, True, True)
    pdvs = [value for pdata in message.encode_msg(5, max_pdu)
            for _, value in pdata.presentation_data_value_list]  # fmt: skip
    return command_set, pdvs


@given(
    responding_to=st.integers(0, 0xFFFF),
    class_uid=UIDS,
    instance_uid=UIDS,
    status=st.sampled_from([0x0000, 0xA700, 0xA900, 0xC000, 0x0124, 0xB000])
    | st.integers(0, 0xFFFF),
    comment=st.none() | st.just("gateway spool is full"),
    max_pdu=st.sampled_from([0, 7, 8, 16, 64, 65536]) | st.integers(7, 300),
)
def test_a_store_response_is_encoded_as_pynetdicom_encodes_it(
    responding_to: int, class_uid: str, instance_uid: str, status: int, comment: str | None,
    max_pdu: int,
) -> None:  # fmt: skip
    rsp = _response(
        responding_to=responding_to, class_uid=class_uid, instance_uid=instance_uid,
        status=status, comment=comment,
    )  # fmt: skip
    ours = encode_store_response(rsp)
    kept = (rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID)  # as the primitive holds them
    plain = all(set(uid) <= set("0123456789.") and len(uid) <= 64 for uid in kept)
    if comment is not None or not plain:
        assert ours is None  # left to pynetdicom
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        command_set, pdvs = _pynetdicoms(rsp, max_pdu)
    assert ours == command_set
    assert store_response_pdvs(ours, max_pdu) == pdvs


def test_a_maximum_pdu_length_pynetdicom_refuses_is_left_to_it() -> None:
    rsp = _response(responding_to=1, class_uid=CT, instance_uid="1.2.3", status=0, comment=None)
    encoded = encode_store_response(rsp)
    assert encoded is not None
    with pytest.raises(ZeroDivisionError):  # pynetdicom's fragment count, 6 bytes less
        _pynetdicoms(rsp, 6)
    assert store_response_pdvs(encoded, 6) is None
