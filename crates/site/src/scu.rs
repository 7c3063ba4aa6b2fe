//! A C-STORE SCU: sends DICOM files to a storage SCP as they are (no transcoding: each file's
//! own transfer syntax is proposed), for `medfed site send`, the demo (a PACS pushing to the
//! site nodes) and the harvest benchmark.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dicom_core::{DataElement, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_ul::Pdu;
use dicom_ul::association::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("association with {addr}: {reason}")]
    Association { addr: String, reason: String },
}

/// What a send did: instances stored, and those refused with the SCP's status.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SendReport {
    pub stored: usize,
    pub refused: Vec<(PathBuf, u16)>,
}

/// One file to send, as its file meta group describes it (the data set is read when sent, so a
/// large folder is never held in memory).
struct Outgoing {
    path: PathBuf,
    sop_class: String,
    sop_instance: String,
    transfer_syntax: String,
    /// Where the data set starts: preamble (128) + "DICM" (4) + group length element (12) + the
    /// rest of group 0002.
    dataset_offset: usize,
}

fn trim(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).to_string()
}

fn file_err(path: &Path) -> impl Fn(String) -> SendError + '_ {
    move |reason| SendError::File {
        path: path.to_path_buf(),
        reason,
    }
}

fn outgoing(path: &Path) -> Result<Outgoing, SendError> {
    use std::io::{Read, Seek};
    let err = file_err(path);
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    f.seek(std::io::SeekFrom::Start(128))
        .map_err(|e| err(e.to_string()))?;
    let meta = dicom_object::meta::FileMetaTable::from_reader((&mut f).take(1 << 20))
        .map_err(|e| err(format!("not DICOM: {e}")))?;
    Ok(Outgoing {
        path: path.to_path_buf(),
        sop_class: trim(meta.media_storage_sop_class_uid()),
        sop_instance: trim(meta.media_storage_sop_instance_uid()),
        transfer_syntax: trim(meta.transfer_syntax()),
        dataset_offset: 144 + meta.information_group_length as usize,
    })
}

impl Outgoing {
    fn dataset(&self) -> Result<Vec<u8>, SendError> {
        let mut bytes =
            std::fs::read(&self.path).map_err(|e| file_err(&self.path)(e.to_string()))?;
        if self.dataset_offset > bytes.len() {
            return Err(file_err(&self.path)(
                "file meta group longer than the file".into(),
            ));
        }
        bytes.drain(..self.dataset_offset);
        Ok(bytes)
    }
}

fn store_request(o: &Outgoing, message_id: u16) -> Result<Vec<u8>, String> {
    let obj = InMemDicomObject::command_from_element_iter([
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            dicom_value!(Str, o.sop_class.as_str()),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [0x0001])),
        DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [message_id])),
        DataElement::new(tags::PRIORITY, VR::US, dicom_value!(U16, [0x0000])),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            dicom_value!(U16, [0x0000]),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            dicom_value!(Str, o.sop_instance.as_str()),
        ),
    ]);
    let ts = dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, &ts)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Send `files` to the SCP at `addr` (`host:port`) in one association.
pub fn send_files(
    addr: &str,
    calling_ae: &str,
    called_ae: &str,
    files: &[PathBuf],
) -> Result<SendReport, SendError> {
    let assoc_err = |reason: String| SendError::Association {
        addr: addr.to_string(),
        reason,
    };
    let items = files
        .iter()
        .map(|f| outgoing(f))
        .collect::<Result<Vec<_>, _>>()?;
    let contexts: BTreeMap<(&str, &str), ()> = items
        .iter()
        .map(|o| ((o.sop_class.as_str(), o.transfer_syntax.as_str()), ()))
        .collect();
    if contexts.len() > 128 {
        return Err(assoc_err(
            "more than 128 SOP class / transfer syntax pairs; send in parts".into(),
        ));
    }
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_ae)
        .called_ae_title(called_ae)
        .read_timeout(Duration::from_secs(60))
        .write_timeout(Duration::from_secs(60));
    for (class, ts) in contexts.keys() {
        options = options.with_presentation_context(*class, vec![*ts]);
    }
    let mut assoc = options
        .establish_with(&format!("{called_ae}@{addr}"))
        .map_err(|e| assoc_err(e.to_string()))?;
    // Small command PDUs must not wait for delayed acknowledgements.
    let _ = assoc.inner_stream().set_nodelay(true);
    let max = (assoc.acceptor_max_pdu_length().max(4096) as usize).min(1 << 20) - 64;
    let mut report = SendReport::default();
    for (i, o) in items.iter().enumerate() {
        let pc = assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.abstract_syntax == o.sop_class
                    && pc.transfer_syntax == o.transfer_syntax
                    && pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance
            })
            .map(|pc| pc.id);
        let Some(pc) = pc else {
            report.refused.push((o.path.clone(), 0x0122));
            continue;
        };
        let message_id = (i % 0xFFFF) as u16 + 1;
        let command = store_request(o, message_id).map_err(assoc_err)?;
        let mut pdus = vec![Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        }];
        let dataset = o.dataset()?;
        let chunks: Vec<&[u8]> = dataset.chunks(max).collect();
        for (k, chunk) in chunks.iter().enumerate() {
            pdus.push(Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Data,
                    is_last: k + 1 == chunks.len(),
                    data: chunk.to_vec(),
                }],
            });
        }
        for p in &pdus {
            assoc.send(p).map_err(|e| assoc_err(e.to_string()))?;
        }
        let status = match assoc.receive().map_err(|e| assoc_err(e.to_string()))? {
            Pdu::PData { data } => data
                .into_iter()
                .find(|v| v.value_type == PDataValueType::Command)
                .and_then(|v| {
                    let ts =
                        dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased();
                    InMemDicomObject::read_dataset_with_ts(v.data.as_slice(), &ts).ok()
                })
                .and_then(|cmd| cmd.element(tags::STATUS).ok()?.uint16().ok())
                .ok_or_else(|| assoc_err("a C-STORE response without a status".into()))?,
            other => return Err(assoc_err(format!("unexpected answer {other:?}"))),
        };
        // Success, or a warning (the instance was stored with a remark).
        if status == 0 || status & 0xF000 == 0xB000 {
            report.stored += 1;
        } else {
            report.refused.push((o.path.clone(), status));
        }
    }
    let _ = assoc.release();
    Ok(report)
}
