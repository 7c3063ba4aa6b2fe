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
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};

use crate::inbox::{Inbox, InboxError};

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
const STATUS_SUCCESS: u16 = 0x0000;
/// Refused: out of resources (the inbox quota).
const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: cannot understand.
const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;

/// Only the listed calling AE titles may associate.
#[derive(Debug, Clone)]
struct CallingAeAllowList(Vec<String>);

impl AccessControl for CallingAeAllowList {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
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
        let mut options = ServerAssociationOptions::new()
            .ae_access_control(CallingAeAllowList(self.allowed.clone()))
            .ae_title(self.ae_title.clone())
            // Any storage SOP class: what arrives is checked by de-identification, not here.
            .promiscuous(true)
            .with_abstract_syntax(VERIFICATION)
            .read_timeout(Duration::from_secs(60))
            .write_timeout(Duration::from_secs(60));
        for ts in TRANSFER_SYNTAXES {
            options = options.with_transfer_syntax(ts);
        }
        let options = Arc::new(options);
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nonblocking(false);
                    // Small command PDUs must not wait for delayed acknowledgements.
                    let _ = stream.set_nodelay(true);
                    let (inbox, options) = (inbox.clone(), options.clone());
                    std::thread::spawn(move || {
                        if let Err(e) = serve(stream, &options, &inbox) {
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

/// A DIMSE response command (C-ECHO-RSP, C-STORE-RSP), encoded as commands always are:
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

fn serve(
    stream: TcpStream,
    options: &ServerAssociationOptions<
        '_,
        CallingAeAllowList,
        dicom_ul::association::server::DefaultNegotiation,
    >,
    inbox: &Inbox,
) -> Result<(), String> {
    let mut assoc = options.establish(stream).map_err(|e| e.to_string())?;
    let peer = dicom_ul::association::Association::peer_ae_title(&assoc).to_string();
    tracing::info!(calling = %peer, "association accepted");
    let mut data = Vec::with_capacity(1 << 20);
    let (mut msg_id, mut sop_class, mut sop_uid) = (0u16, String::new(), String::new());
    loop {
        let pdu = match assoc.receive() {
            Ok(p) => p,
            Err(e) => return Err(e.to_string()),
        };
        match pdu {
            Pdu::PData { data: values } => {
                for v in values {
                    match (v.value_type, v.is_last) {
                        (PDataValueType::Data, false) => data.extend_from_slice(&v.data),
                        (PDataValueType::Command, true) => {
                            let ts =
                                dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN
                                    .erased();
                            let cmd =
                                InMemDicomObject::read_dataset_with_ts(v.data.as_slice(), &ts)
                                    .map_err(|e| format!("unreadable command: {e}"))?;
                            let field = cmd
                                .element(tags::COMMAND_FIELD)
                                .ok()
                                .and_then(|e| e.uint16().ok())
                                .unwrap_or(0);
                            msg_id = cmd
                                .element(tags::MESSAGE_ID)
                                .ok()
                                .and_then(|e| e.uint16().ok())
                                .unwrap_or(0);
                            if field == 0x0030 {
                                let rsp =
                                    response(0x8030, VERIFICATION, msg_id, STATUS_SUCCESS, None)?;
                                send_command(&mut assoc, v.presentation_context_id, rsp)?;
                            } else {
                                sop_class = uid_of(&cmd, tags::AFFECTED_SOP_CLASS_UID);
                                sop_uid = uid_of(&cmd, tags::AFFECTED_SOP_INSTANCE_UID);
                            }
                            data.clear();
                        }
                        (PDataValueType::Data, true) => {
                            data.extend_from_slice(&v.data);
                            let ts = assoc
                                .presentation_contexts()
                                .iter()
                                .find(|pc| pc.id == v.presentation_context_id)
                                .map(|pc| pc.transfer_syntax.clone())
                                .unwrap_or_default();
                            let status = match inbox.store(
                                &sop_class,
                                &sop_uid,
                                ts.trim_end_matches('\0'),
                                &data,
                            ) {
                                Ok(stored) => {
                                    tracing::info!(calling = %peer, ?stored, "instance received");
                                    STATUS_SUCCESS
                                }
                                Err(InboxError::QuotaExceeded { used, quota }) => {
                                    tracing::warn!(
                                        used,
                                        quota,
                                        "inbox full: instance refused, intake paused"
                                    );
                                    STATUS_OUT_OF_RESOURCES
                                }
                                Err(e @ InboxError::DiskFull { .. }) => {
                                    tracing::warn!(error = %e, "instance refused, intake paused");
                                    STATUS_OUT_OF_RESOURCES
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "instance refused");
                                    STATUS_CANNOT_UNDERSTAND
                                }
                            };
                            data.clear();
                            let rsp = response(0x8001, &sop_class, msg_id, status, Some(&sop_uid))?;
                            send_command(&mut assoc, v.presentation_context_id, rsp)?;
                        }
                        _ => {}
                    }
                }
            }
            Pdu::ReleaseRQ => {
                let _ = assoc.send(&Pdu::ReleaseRP);
                return Ok(());
            }
            Pdu::AbortRQ { .. } => return Ok(()),
            _ => {}
        }
    }
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
