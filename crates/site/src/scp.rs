//! The DICOM receiver: C-STORE and C-ECHO over DICOM upper layer (dicom-ul), for the calling AE
//! titles the site policy lists. Data sets are stored as received (no transcoding) in the
//! [`Inbox`]; success is answered only after the file is complete and synced.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dicom_core::{DataElement, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::Pdu;
use dicom_ul::association::ServerAssociationOptions;
use dicom_ul::association::server::AccessControl;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, PresentationContextResultReason,
    UserIdentity,
};

use crate::inbox::{Inbox, InboxError, Stored};

/// Transfer syntaxes accepted as they are: implicit and explicit VR little endian, JPEG
/// baseline, JPEG lossless (process 14 and SV1), JPEG 2000 (lossless and lossy), RLE.
pub const TRANSFER_SYNTAXES: [&str; 8] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
];

const VERIFICATION: &str = "1.2.840.10008.1.1";
/// The UID root of the DICOM standard: SOP classes under it are known to the dictionary.
const DICOM_ROOT: &str = "1.2.840.10008.";
const STATUS_SUCCESS: u16 = 0x0000;
/// Refused: SOP class not supported (a C-STORE whose SOP class is not its context's).
const STATUS_SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Failure: unrecognized operation (anything but C-STORE and C-ECHO: this node offers no
/// query, no retrieval, no normalised services).
const STATUS_UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Refused: out of resources (the inbox quota).
const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: cannot understand.
const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;

const C_STORE_RQ: u16 = 0x0001;
const C_ECHO_RQ: u16 = 0x0030;
const C_CANCEL_RQ: u16 = 0x0FFF;
/// Command Data Set Type (0000,0800) when no data set follows.
const NO_DATA_SET: u16 = 0x0101;

/// Whether a presentation context for this abstract syntax is accepted: Verification, a
/// storage SOP class of the standard, or a SOP class outside the standard's UID root (a
/// vendor's private storage class, which PACS do send; on it too only C-STORE is served).
/// Every other SOP class of the standard (Query/Retrieve FIND, MOVE, GET, worklists, print,
/// storage commitment, procedure steps) is refused when the association is negotiated: the
/// site node answers no query and hands nothing out over DICOM.
fn accepts_abstract_syntax(uid: &str) -> bool {
    use dicom_core::dictionary::UidDictionary;
    let uid = uid.trim_end_matches(['\0', ' ']);
    if uid == VERIFICATION {
        return true;
    }
    if !uid.starts_with(DICOM_ROOT) {
        return true;
    }
    let Some(entry) = dicom_dictionary_std::StandardSopClassDictionary.by_uid(uid) else {
        // Under the standard's root but unknown to the dictionary: not something to guess at.
        return false;
    };
    let name = entry.name;
    // Storage classes are named "... Storage", "... Storage - For Presentation" and so on;
    // the other names containing "Storage" are services, not objects (commitment, DICOMDIR,
    // the retired print "... Storage SOP Class").
    name.contains("Storage")
        && !name.contains("Storage Commitment")
        && !name.contains("Media Storage Directory")
        && !name.contains("SOP Class")
}

/// Who may associate: the called AE title must be this node's own, and the calling AE title
/// one that site.toml lists.
#[derive(Debug, Clone)]
struct SiteAeControl(Vec<String>);

impl AccessControl for SiteAeControl {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        // AE titles: leading and trailing spaces are not significant (PS3.5 6.2, AE).
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if self.0.iter().any(|a| a.trim() == calling_ae_title.trim()) {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// A bound C-STORE SCP.
pub struct Receiver {
    listener: TcpListener,
    ae_title: String,
    allowed: Vec<String>,
}

impl Receiver {
    pub fn bind(
        addr: SocketAddr,
        ae_title: &str,
        allowed_calling: &[String],
    ) -> std::io::Result<Receiver> {
        Ok(Receiver {
            listener: TcpListener::bind(addr)?,
            ae_title: ae_title.to_string(),
            allowed: allowed_calling.to_vec(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve associations, one thread each, until `stop` is set.
    pub fn run(self, inbox: Arc<Inbox>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let (ae_title, allowed) = (Arc::new(self.ae_title), Arc::new(self.allowed));
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nonblocking(false);
                    // Small command PDUs must not wait for delayed acknowledgements.
                    let _ = stream.set_nodelay(true);
                    let (inbox, ae_title, allowed) =
                        (inbox.clone(), ae_title.clone(), allowed.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = serve(stream, &ae_title, &allowed, &inbox) {
                            tracing::warn!(%peer, error = %e, "DICOM association ended with an error");
                        }
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }
}

/// The largest A-ASSOCIATE-RQ looked at before negotiating (a storescu proposing every storage
/// class sends about 20 KiB).
const MAX_ASSOCIATE_RQ: usize = 256 * 1024;

/// The abstract syntaxes the A-ASSOCIATE-RQ waiting on `stream` proposes, read without
/// consuming it (`peek`), so that the negotiation can accept exactly the acceptable ones:
/// dicom-ul accepts either a fixed list or everything, and the storage SOP classes a PACS may
/// send are too many (and partly private) to list. Empty when no request arrives in time or
/// it cannot be parsed: then only Verification is offered and dicom-ul answers the rest.
fn proposed_abstract_syntaxes(stream: &TcpStream) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; MAX_ASSOCIATE_RQ];
    let mut seen = 0;
    loop {
        let n = match stream.peek(&mut buf) {
            Ok(0) | Err(_) => return Vec::new(),
            Ok(n) => n,
        };
        if n != seen {
            seen = n;
            match dicom_ul::pdu::read_pdu(&buf[..n], dicom_ul::pdu::MAXIMUM_PDU_SIZE, false) {
                Ok(Some(Pdu::AssociationRQ(rq))) => {
                    return rq
                        .presentation_contexts
                        .into_iter()
                        .map(|pc| pc.abstract_syntax.trim_end_matches('\0').to_string())
                        .collect();
                }
                Ok(None) if n < buf.len() => {}
                _ => return Vec::new(),
            }
        }
        if std::time::Instant::now() > deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

type Association = dicom_ul::ServerAssociation<TcpStream>;

/// What the next data set fragments are for.
enum Pending {
    /// Nothing: a data set fragment now is a protocol error.
    Idle,
    /// A C-STORE-RQ's data set, to be stored and answered.
    Store {
        pc: u8,
        msg_id: u16,
        sop_class: String,
        sop_uid: String,
        transfer_syntax: String,
    },
    /// A refused request's data set, read and dropped; then the refusal is sent.
    Discard { pc: u8, response: Vec<u8> },
}

fn serve(
    stream: TcpStream,
    ae_title: &str,
    allowed: &[String],
    inbox: &Inbox,
) -> Result<(), String> {
    let acceptable: Vec<String> = proposed_abstract_syntaxes(&stream)
        .into_iter()
        .filter(|uid| accepts_abstract_syntax(uid))
        .collect();
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(SiteAeControl(allowed.to_vec()))
        .ae_title(ae_title.to_string())
        .with_abstract_syntax(VERIFICATION)
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60));
    for uid in acceptable {
        options = options.with_abstract_syntax(uid);
    }
    for ts in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts);
    }
    let mut assoc = options.establish(stream).map_err(|e| e.to_string())?;
    let peer = dicom_ul::association::Association::peer_ae_title(&assoc).to_string();
    tracing::info!(calling = %peer, "association accepted");
    let mut command = Vec::new();
    let mut data = Vec::with_capacity(1 << 20);
    let mut pending = Pending::Idle;
    loop {
        let values = match assoc.receive().map_err(|e| e.to_string())? {
            Pdu::PData { data: values } => values,
            Pdu::ReleaseRQ => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                return Ok(());
            }
            Pdu::AbortRQ { .. } => return Ok(()),
            // Not the PDU itself: its debug form would carry whatever it holds.
            _ => return abort(assoc, "an unexpected PDU"),
        };
        for v in values {
            let pc = v.presentation_context_id;
            let Some(context) = accepted_context(&assoc, pc) else {
                return abort(
                    assoc,
                    "data on a presentation context that was not accepted",
                );
            };
            match v.value_type {
                PDataValueType::Command => {
                    if !matches!(pending, Pending::Idle) {
                        return abort(assoc, "a command before the previous data set ended");
                    }
                    command.extend_from_slice(&v.data);
                    if !v.is_last {
                        continue;
                    }
                    let cmd = std::mem::take(&mut command);
                    match on_command(&cmd, pc, &context) {
                        Ok(Next::Answer(rsp)) => send_command(&mut assoc, pc, rsp)?,
                        Ok(Next::Wait(p)) => pending = p,
                        Ok(Next::Nothing) => {}
                        Err(why) => return abort(assoc, &why),
                    }
                }
                PDataValueType::Data => {
                    match &pending {
                        Pending::Idle => return abort(assoc, "a data set without a command"),
                        Pending::Store { pc: p, .. } | Pending::Discard { pc: p, .. }
                            if *p != pc =>
                        {
                            return abort(assoc, "a data set on another presentation context");
                        }
                        Pending::Store { .. } => {
                            data.extend_from_slice(&v.data);
                            // More than the inbox could ever take: drop the rest and refuse.
                            if data.len() as u64 > inbox.quota_bytes() {
                                data = Vec::new();
                                if let Pending::Store {
                                    pc,
                                    msg_id,
                                    sop_class,
                                    sop_uid,
                                    ..
                                } = std::mem::replace(&mut pending, Pending::Idle)
                                {
                                    pending = Pending::Discard {
                                        pc,
                                        response: response(
                                            0x8001,
                                            &sop_class,
                                            msg_id,
                                            STATUS_OUT_OF_RESOURCES,
                                            Some(&sop_uid),
                                        )?,
                                    };
                                }
                            }
                        }
                        Pending::Discard { .. } => {}
                    }
                    if !v.is_last {
                        continue;
                    }
                    match std::mem::replace(&mut pending, Pending::Idle) {
                        Pending::Store {
                            pc,
                            msg_id,
                            sop_class,
                            sop_uid,
                            transfer_syntax,
                        } => {
                            let status =
                                store(inbox, &peer, &sop_class, &sop_uid, &transfer_syntax, &data);
                            data.clear();
                            let rsp = response(0x8001, &sop_class, msg_id, status, Some(&sop_uid))?;
                            send_command(&mut assoc, pc, rsp)?;
                        }
                        Pending::Discard { pc, response } => {
                            send_command(&mut assoc, pc, response)?
                        }
                        Pending::Idle => {}
                    }
                }
            }
        }
    }
}

/// The abstract and transfer syntax of an accepted presentation context.
struct Context {
    abstract_syntax: String,
    transfer_syntax: String,
}

fn accepted_context(assoc: &Association, pc: u8) -> Option<Context> {
    assoc
        .presentation_contexts()
        .iter()
        .find(|c| c.id == pc && c.reason == PresentationContextResultReason::Acceptance)
        .map(|c| Context {
            abstract_syntax: c.abstract_syntax.trim_end_matches('\0').to_string(),
            transfer_syntax: c.transfer_syntax.trim_end_matches('\0').to_string(),
        })
}

/// What a command asks of the receiver.
enum Next {
    /// Answer now.
    Answer(Vec<u8>),
    /// Read its data set first.
    Wait(Pending),
    /// Nothing to answer (C-CANCEL).
    Nothing,
}

fn on_command(cmd: &[u8], pc: u8, context: &Context) -> Result<Next, String> {
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let cmd = InMemDicomObject::read_dataset_with_ts(cmd, &ts)
        .map_err(|e| format!("unreadable command: {e}"))?;
    let u16_of = |tag| {
        cmd.element(tag)
            .ok()
            .and_then(|e: &dicom_object::mem::InMemElement| e.uint16().ok())
    };
    let field = u16_of(tags::COMMAND_FIELD).ok_or("a command without a Command Field")?;
    let msg_id = u16_of(tags::MESSAGE_ID).unwrap_or(0);
    let has_data = u16_of(tags::COMMAND_DATA_SET_TYPE).is_some_and(|t| t != NO_DATA_SET);
    let mut sop_class = uid_of(&cmd, tags::AFFECTED_SOP_CLASS_UID);
    if sop_class.is_empty() {
        sop_class = uid_of(&cmd, tags::REQUESTED_SOP_CLASS_UID);
    }
    if sop_class.is_empty() && field == C_ECHO_RQ {
        sop_class = VERIFICATION.into();
    }
    let answer = |status: u16, sop_instance: Option<&str>| -> Result<Next, String> {
        let rsp = response(field | 0x8000, &sop_class, msg_id, status, sop_instance)?;
        Ok(if has_data {
            Next::Wait(Pending::Discard { pc, response: rsp })
        } else {
            Next::Answer(rsp)
        })
    };
    match field {
        C_ECHO_RQ => answer(STATUS_SUCCESS, None),
        C_STORE_RQ => {
            let sop_uid = uid_of(&cmd, tags::AFFECTED_SOP_INSTANCE_UID);
            if sop_class != context.abstract_syntax || context.abstract_syntax == VERIFICATION {
                return answer(STATUS_SOP_CLASS_NOT_SUPPORTED, Some(&sop_uid));
            }
            if !has_data {
                return answer(STATUS_CANNOT_UNDERSTAND, Some(&sop_uid));
            }
            Ok(Next::Wait(Pending::Store {
                pc,
                msg_id,
                sop_class,
                sop_uid,
                transfer_syntax: context.transfer_syntax.clone(),
            }))
        }
        C_CANCEL_RQ => Ok(Next::Nothing),
        // Any other request (C-FIND, C-MOVE, C-GET, N-*): refused with its own response.
        f if f & 0x8000 == 0 => {
            tracing::info!(
                command = format_args!("{f:#06x}"),
                "DIMSE request refused: unrecognized operation"
            );
            answer(STATUS_UNRECOGNIZED_OPERATION, None)
        }
        // A response: this node sends no requests, so there is nothing it could answer.
        f => Err(format!("an unsolicited DIMSE response ({f:#06x})")),
    }
}

/// Store a received data set; the C-STORE status to answer. Logs carry no UID: the inbox file
/// is named by the original SOP Instance UID, so neither its path nor an I/O error naming it
/// is logged.
fn store(
    inbox: &Inbox,
    peer: &str,
    sop_class: &str,
    sop_uid: &str,
    transfer_syntax: &str,
    data: &[u8],
) -> u16 {
    match inbox.store(sop_class, sop_uid, transfer_syntax, data) {
        Ok(stored) => {
            let new = matches!(stored, Stored::New(_));
            tracing::info!(calling = %peer, new, bytes = data.len(), "instance received");
            STATUS_SUCCESS
        }
        Err(InboxError::QuotaExceeded { used, quota }) => {
            tracing::warn!(used, quota, "inbox full: instance refused, intake paused");
            STATUS_OUT_OF_RESOURCES
        }
        Err(e @ InboxError::DiskFull { .. }) => {
            tracing::warn!(error = %e, "instance refused, intake paused");
            STATUS_OUT_OF_RESOURCES
        }
        Err(InboxError::Io { source, .. }) => {
            tracing::warn!(error = %source, "instance refused: the inbox could not be written");
            STATUS_OUT_OF_RESOURCES
        }
        Err(e) => {
            tracing::warn!(error = %e, "instance refused");
            STATUS_CANNOT_UNDERSTAND
        }
    }
}

fn abort(assoc: Association, why: &str) -> Result<(), String> {
    let _ = assoc.abort();
    Err(format!("aborted: {why}"))
}

/// A DIMSE response command (C-ECHO-RSP, C-STORE-RSP, or the refusal of any other request),
/// encoded as commands always are:
/// implicit VR little endian, with no data set.
fn response(
    command_field: u16,
    sop_class: &str,
    message_id: u16,
    status: u16,
    sop_instance: Option<&str>,
) -> Result<Vec<u8>, String> {
    let mut fields = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, sop_class),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            dicom_value!(U16, [command_field]),
        ),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            dicom_value!(U16, [message_id]),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [0x0101]),
        ),
        DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [status])),
    ];
    if let Some(uid) = sop_instance {
        fields.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, uid),
        ));
    }
    let obj = InMemDicomObject::command_from_element_iter(fields);
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, &ts)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn uid_of(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
        .unwrap_or_default()
}

fn send_command<S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket>(
    assoc: &mut dicom_ul::ServerAssociation<S>,
    pc: u8,
    data: Vec<u8>,
) -> Result<(), String> {
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    //! The DIMSE layer over a real association (dicom-ul's own client on 127.0.0.1): what
    //! dcmtk's tools cannot send (a C-FIND on a storage context) is refused with its own
    //! response; the negotiation refuses Query/Retrieve contexts and foreign called AE titles.
    //! The same probes with dcmtk against a site process are in `medfed/tests/sites.rs`.

    use super::*;
    use dicom_dictionary_std::uids;
    use dicom_ul::ClientAssociationOptions;

    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

    fn command(fields: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
        let obj = InMemDicomObject::command_from_element_iter(fields);
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &ts).unwrap();
        out
    }

    fn request(field: u16, sop_class: &str, msg_id: u16, sop_uid: Option<&str>) -> Vec<u8> {
        let mut fields = vec![
            DataElement::new(
                tags::AFFECTED_SOP_CLASS_UID,
                VR::UI,
                dicom_value!(Str, sop_class),
            ),
            DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [field])),
            DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [msg_id])),
            DataElement::new(tags::PRIORITY, VR::US, dicom_value!(U16, [0])),
            // A data set follows.
            DataElement::new(
                tags::COMMAND_DATA_SET_TYPE,
                VR::US,
                dicom_value!(U16, [0x0000]),
            ),
        ];
        if let Some(uid) = sop_uid {
            fields.push(DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                dicom_value!(Str, uid),
            ));
        }
        command(fields)
    }

    /// An explicit VR little endian data set holding SOP Class and Instance UID.
    fn data_set(sop_class: &str, sop_uid: &str) -> Vec<u8> {
        let obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, dicom_value!(Str, sop_class)),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, dicom_value!(Str, sop_uid)),
        ]);
        let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &ts).unwrap();
        out
    }

    fn pdv(pc: u8, value_type: PDataValueType, data: Vec<u8>) -> Pdu {
        Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last: true,
                data,
            }],
        }
    }

    /// The Command Field and Status of the next response.
    fn answer<S: std::io::Read + std::io::Write + dicom_ul::association::CloseSocket>(
        assoc: &mut dicom_ul::ClientAssociation<S>,
    ) -> (u16, u16) {
        let Pdu::PData { data } = assoc.receive().unwrap() else {
            panic!("expected a response command");
        };
        let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let rsp = InMemDicomObject::read_dataset_with_ts(&data[0].data[..], &ts).unwrap();
        let get = |tag| rsp.element(tag).unwrap().uint16().unwrap();
        (get(tags::COMMAND_FIELD), get(tags::STATUS))
    }

    #[test]
    fn queries_and_retrievals_are_refused_and_only_the_own_called_ae_title_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Arc::new(Inbox::open(dir.path(), 1 << 20).unwrap());
        let r = Receiver::bind(
            "127.0.0.1:0".parse().unwrap(),
            "MEDFED",
            &["PACS1".to_string()],
        )
        .unwrap();
        let addr = r.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (i, st) = (inbox.clone(), stop.clone());
        let thread = std::thread::spawn(move || r.run(i, st).unwrap());

        // A storage context is accepted; the Query/Retrieve contexts proposed beside it are not.
        let mut assoc = ClientAssociationOptions::new()
            .calling_ae_title("PACS1")
            .called_ae_title("MEDFED")
            .with_presentation_context(uids::CT_IMAGE_STORAGE, vec![EXPLICIT_LE])
            .with_presentation_context(
                uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
                vec![EXPLICIT_LE],
            )
            .with_presentation_context(
                uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
                vec![EXPLICIT_LE],
            )
            .establish_with(&addr)
            .unwrap();
        let accepted: Vec<&str> = assoc
            .presentation_contexts()
            .iter()
            .map(|pc| pc.abstract_syntax.as_str())
            .collect();
        assert_eq!(accepted, [uids::CT_IMAGE_STORAGE]);
        let pc = assoc.presentation_contexts()[0].id;

        // C-FIND, C-MOVE and C-GET sent on the storage context anyway get their own response
        // with 0x0211 (not a C-STORE response), and their identifiers are not stored.
        for (i, (field, rsp)) in [(0x0020u16, 0x8020u16), (0x0021, 0x8021), (0x0010, 0x8010)]
            .into_iter()
            .enumerate()
        {
            assoc
                .send(&pdv(
                    pc,
                    PDataValueType::Command,
                    request(field, uids::CT_IMAGE_STORAGE, i as u16 + 1, None),
                ))
                .unwrap();
            assoc
                .send(&pdv(
                    pc,
                    PDataValueType::Data,
                    data_set(uids::CT_IMAGE_STORAGE, "1.2.3.999"),
                ))
                .unwrap();
            assert_eq!(answer(&mut assoc), (rsp, STATUS_UNRECOGNIZED_OPERATION));
        }
        assert!(inbox.list().unwrap().is_empty());
        // The association still serves C-STORE.
        assoc
            .send(&pdv(
                pc,
                PDataValueType::Command,
                request(
                    C_STORE_RQ,
                    uids::CT_IMAGE_STORAGE,
                    9,
                    Some("1.2.826.0.1.3680043.2.1"),
                ),
            ))
            .unwrap();
        assoc
            .send(&pdv(
                pc,
                PDataValueType::Data,
                data_set(uids::CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.2.1"),
            ))
            .unwrap();
        assert_eq!(answer(&mut assoc), (0x8001, STATUS_SUCCESS));
        assert_eq!(inbox.list().unwrap().len(), 1);
        // A data set that no command announced ends the association.
        assoc
            .send(&pdv(
                pc,
                PDataValueType::Data,
                data_set(uids::CT_IMAGE_STORAGE, "1.2.3.4.5"),
            ))
            .unwrap();
        assert!(matches!(assoc.receive(), Ok(Pdu::AbortRQ { .. }) | Err(_)));

        // Only Query/Retrieve proposed: nothing is accepted.
        let only_find = ClientAssociationOptions::new()
            .calling_ae_title("PACS1")
            .called_ae_title("MEDFED")
            .with_abstract_syntax(uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET)
            .establish_with(&addr);
        assert!(only_find.is_err());
        // Addressed to another AE title: rejected, whoever calls.
        let Err(e) = ClientAssociationOptions::new()
            .calling_ae_title("PACS1")
            .called_ae_title("NOTME")
            .with_abstract_syntax(uids::CT_IMAGE_STORAGE)
            .establish_with(&addr)
        else {
            panic!("an association for another AE title was accepted");
        };
        assert!(
            format!("{e:?}").contains("CalledAETitleNotRecognized"),
            "{e:?}"
        );
        assert_eq!(inbox.list().unwrap().len(), 1);

        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }

    #[test]
    fn storage_classes_are_accepted_services_are_not() {
        for ok in [
            uids::VERIFICATION,
            uids::CT_IMAGE_STORAGE,
            uids::ENHANCED_SR_STORAGE,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION,
            uids::RT_STRUCTURE_SET_STORAGE,
            // A vendor's private storage class (Siemens CSA non-image).
            "1.3.12.2.1107.5.9.1",
        ] {
            assert!(accepts_abstract_syntax(ok), "{ok}");
        }
        for refused in [
            uids::PATIENT_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_FIND,
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_MOVE,
            uids::STUDY_ROOT_QUERY_RETRIEVE_INFORMATION_MODEL_GET,
            uids::COMPOSITE_INSTANCE_ROOT_RETRIEVE_GET,
            uids::MODALITY_WORKLIST_INFORMATION_MODEL_FIND,
            uids::STORAGE_COMMITMENT_PUSH_MODEL,
            uids::MEDIA_STORAGE_DIRECTORY_STORAGE,
            uids::BASIC_FILM_SESSION,
            "1.2.840.10008.5.1.4.1.1.999999",
        ] {
            assert!(!accepts_abstract_syntax(refused), "{refused}");
        }
    }
}
