//! The router's classifier against realistic customer messages: 30 per language (English,
//! Spanish, Portuguese), six kinds each (complaints, orders, bookings, information requests,
//! replies to our own messages, requests for a person), with the intent, language and human
//! request expected. Words shared by two languages ("pedido", "reserva", "horario") must count
//! once: the language is detected first. An explicit request for a person is always flagged, so
//! the router sends it to a human and acknowledges it, whatever the intent.

use projections::rules::{Intent, Lang, Rules};

use Intent::{Complaint as C, InformationRequest as I, OrderOrBooking as O, SupportInquiry as S, UnpromptedReply as R};

/// (text, a reply to one of our messages, intent, asks for a person)
type Case = (&'static str, bool, Intent, bool);

const EN: &[Case] = &[
    // Complaints.
    ("My package arrived broken and nobody answers my emails", false, C, false),
    ("This is unacceptable, I was charged twice for the same order", false, C, false),
    ("I want a refund, the shoes fell apart after one week", false, C, false),
    ("Still not delivered after 3 weeks, really disappointed", false, C, false),
    ("Worst customer service ever, I'm filing a complaint", false, C, false),
    // Orders.
    ("I'd like to order two large pepperoni pizzas for delivery", false, O, false),
    ("Can I buy the blue jacket in size M?", false, O, false),
    ("I want to purchase the annual subscription", false, O, false),
    ("Please add a second bottle to my order before it ships", false, O, false),
    ("Do I place the order here or on the website? I want to buy 3 units", false, O, false),
    // Bookings.
    ("Can I book a table for 4 tonight at 8?", false, O, false),
    ("I need to schedule an appointment with Dr. Lee next week", false, O, false),
    ("Is it possible to reserve a room for the 14th?", false, O, false),
    ("I'd like to make a reservation for Saturday lunch", false, O, false),
    ("Can we move my booking to Friday morning?", false, O, false),
    // Information.
    ("What are your opening hours on Sunday?", false, I, false),
    ("How much does shipping to Canada cost?", false, I, false),
    ("Where is your store in downtown Boston?", false, I, false),
    ("Do you have this model in black?", false, I, false),
    ("What's the price of the premium plan?", false, I, false),
    // Replies to our messages.
    ("Ok, thanks!", true, R, false),
    ("Got it, see you tomorrow", true, R, false),
    ("Perfect 👍", true, R, false),
    ("Sounds good to me", true, R, false),
    ("Thanks, and what's your address?", true, I, false),
    // Requests for a person.
    ("I want to talk to a real person, not a bot", false, S, true),
    ("Can I speak to someone about my broken order?", false, C, true),
    ("Agent please, this is urgent", false, S, true),
    ("Let me talk to a human, I need to change my booking", false, O, true),
    ("Get me a representative, I have a question about the price", false, I, true),
];

const ES: &[Case] = &[
    // Quejas.
    ("Mi paquete llegó roto y nadie me contesta", false, C, false),
    ("Es inaceptable, me cobraron dos veces el mismo pedido", false, C, false),
    ("Quiero un reembolso, el producto vino defectuoso", false, C, false),
    ("Todavía no me llega el pedido después de tres semanas, estoy muy decepcionado", false, C, false),
    ("Pésimo servicio, voy a poner una queja formal", false, C, false),
    // Pedidos.
    ("Quiero hacer un pedido de dos pizzas grandes a domicilio", false, O, false),
    ("¿Puedo comprar la chaqueta azul en talla M?", false, O, false),
    ("Quisiera comprar la suscripción anual", false, O, false),
    ("Por favor agreguen otra botella a mi pedido antes del envío", false, O, false),
    ("Me gustaría encargar tres unidades del modelo nuevo", false, O, false),
    // Reservas.
    ("¿Puedo reservar una mesa para cuatro esta noche?", false, O, false),
    ("Necesito una cita con el doctor la próxima semana", false, O, false),
    ("Quisiera hacer una reserva para el sábado al mediodía", false, O, false),
    ("¿Se puede agendar una visita para el viernes?", false, O, false),
    ("Quiero cambiar mi reserva al domingo", false, O, false),
    // Información.
    ("¿Cuál es el horario de atención los domingos?", false, I, false),
    ("¿Cuánto cuesta el envío a Valencia?", false, I, false),
    ("¿Dónde queda la tienda del centro?", false, I, false),
    ("¿Tienen este modelo en negro?", false, I, false),
    ("¿Qué precio tiene el plan premium?", false, I, false),
    // Respuestas a nuestros mensajes.
    ("Vale, gracias", true, R, false),
    ("Perfecto, nos vemos mañana", true, R, false),
    ("Muchas gracias 🙏", true, R, false),
    ("De acuerdo", true, R, false),
    ("Gracias, ¿y cuál es la dirección?", true, I, false),
    // Pedir una persona.
    ("Quiero hablar con una persona real, no con un robot", false, S, true),
    ("¿Puedo hablar con alguien sobre mi pedido roto?", false, C, true),
    ("Necesito un humano, por favor", false, S, true),
    ("Quiero hablar con un agente para cambiar mi reserva", false, O, true),
    ("Páseme con una persona, tengo una duda sobre el precio", false, I, true),
];

const PT: &[Case] = &[
    // Reclamações.
    ("Quero falar com uma pessoa, meu pedido chegou quebrado e ninguém responde", false, C, true),
    ("Isso é um absurdo, fui cobrado duas vezes pelo mesmo pedido", false, C, false),
    ("Quero meu reembolso, o produto veio com defeito", false, C, false),
    ("Meu pedido ainda não chegou depois de três semanas, estou decepcionado", false, C, false),
    ("Atendimento péssimo, vou fazer uma reclamação", false, C, false),
    // Pedidos.
    ("Quero fazer um pedido de duas pizzas grandes para entrega", false, O, false),
    ("Posso comprar a jaqueta azul no tamanho M?", false, O, false),
    ("Gostaria de comprar a assinatura anual", false, O, false),
    ("Por favor acrescentem mais uma garrafa no meu pedido antes do envio", false, O, false),
    ("Queria fazer uma encomenda de três unidades do modelo novo", false, O, false),
    // Reservas e agendamentos.
    ("Posso reservar uma mesa para quatro hoje à noite?", false, O, false),
    ("Preciso agendar uma consulta com a doutora semana que vem", false, O, false),
    ("Gostaria de fazer uma reserva para sábado no almoço", false, O, false),
    ("Dá pra marcar um horário na sexta de manhã? Quero agendar", false, O, false),
    ("Quero mudar minha reserva para domingo", false, O, false),
    // Informação.
    ("Qual é o horário de funcionamento no domingo?", false, I, false),
    ("Quanto custa o frete para Curitiba?", false, I, false),
    ("Onde fica a loja do centro?", false, I, false),
    ("Vocês têm esse modelo em preto?", false, I, false),
    ("Qual o preço do plano premium?", false, I, false),
    // Respostas às nossas mensagens.
    ("Ok, obrigado!", true, R, false),
    ("Beleza, até amanhã", true, R, false),
    ("Show, valeu 👍", true, R, false),
    ("Combinado então", true, R, false),
    ("Obrigada, e qual é o endereço?", true, I, false),
    // Pedir uma pessoa.
    ("Quero falar com um atendente de verdade, não com robô", false, S, true),
    ("Posso falar com alguém sobre meu pedido quebrado?", false, C, true),
    ("Preciso de um humano, por favor", false, S, true),
    ("Quero falar com uma pessoa para mudar minha reserva", false, O, true),
    ("Me passa para um atendente, tenho uma dúvida sobre o preço", false, I, true),
];

#[test]
fn realistic_messages_in_three_languages() {
    let rules = Rules::default_rules();
    let mut wrong = Vec::new();
    for (cases, lang) in [(EN, Lang::En), (ES, Lang::Es), (PT, Lang::Pt)] {
        assert_eq!(cases.len(), 30, "{lang:?}: 30 sentences per language");
        for &(text, reply, intent, human) in cases {
            let a = rules.assess(text, reply);
            if (a.intent, a.lang, a.human_requested) != (intent, lang, human) {
                wrong.push(format!("{text:?}: got {:?}/{:?}/human={}, want {intent:?}/{lang:?}/human={human}", a.intent, a.lang, a.human_requested));
            }
        }
    }
    assert!(wrong.is_empty(), "{} of 90 misclassified:\n{}", wrong.len(), wrong.join("\n"));
}

/// The defect: "pedido" is in the Spanish and the Portuguese order lists, and summed over both it
/// outweighed the complaint; a request for a person must reach a person whatever the intent.
#[test]
fn a_shared_word_counts_once_and_a_person_is_always_a_person() {
    let rules = Rules::default_rules();
    let a = rules.assess("Quero falar com uma pessoa, meu pedido chegou quebrado e ninguém responde", false);
    assert_eq!((a.intent, a.lang), (Intent::Complaint, Lang::Pt));
    assert!(a.human_requested);
    let booking = rules.assess("Quero falar com uma pessoa para mudar minha reserva", false);
    assert_eq!(booking.intent, Intent::OrderOrBooking);
    assert!(booking.human_requested && !rules.needs_human(booking.intent), "the router must route this one to a human on the request alone");
}
